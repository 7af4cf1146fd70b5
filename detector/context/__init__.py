"""Detection in context: what the GPUs are asked to do, read from the box's inference servers.

`config.py` the `inference:` section; `activity.py` per-server request activity on the step grid
(Prometheus request metrics, else request log lines in Loki, else unknown); `busy.py` the pure
"busy with nobody asking" decision; `plugin.py` the detector plugin that runs it.
"""
