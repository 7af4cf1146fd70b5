"""The vLLM-like `/metrics` of a simulated box that runs vLLM: the families a real vLLM server exposes
(same names and `model_name` label), for the sim exporter's registry and the history writer. Nothing
is yielded while no vLLM answers (box off, container down, model still loading, card lost), as a
scrape of a real vLLM would fail then; a box without vLLM yields nothing at all.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class SimVLLMCollector:
    def __init__(self, box):
        self.box = box

    def describe(self):
        return []  # families vary with the box; registering must not call collect()

    def collect(self):
        snap = self.box.vllm_snapshot()
        if snap is None:
            return
        model, running, waiting, kv, prompt_total, gen_total = snap
        families = (
            (GaugeMetricFamily, "vllm:num_requests_running", "Number of requests currently running on GPU.",
             running),
            (GaugeMetricFamily, "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             waiting),
            (GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv),
            (CounterMetricFamily, "vllm:prompt_tokens", "Number of prefill tokens processed.", prompt_total),
            (CounterMetricFamily, "vllm:generation_tokens", "Number of generation tokens processed.", gen_total),
        )
        for cls, name, doc, value in families:
            fam = cls(name, doc, labels=["model_name"])
            fam.add_metric([model], value)
            yield fam
