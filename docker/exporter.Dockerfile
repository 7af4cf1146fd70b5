# rigwatch GPU exporter: NVML (nvidia-ml-py) + prometheus-client + Docker SDK + waitress, nothing else.
# Build from the repository root:  docker build -f docker/exporter.Dockerfile -t rigwatch/exporter .
# The NVIDIA Container Toolkit mounts the driver's libnvidia-ml.so.1 at run time (compose's GPU
# device reservation); the image itself carries no driver.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY rigwatch ./rigwatch
COPY exporter ./exporter
# constraints.txt: the versions the test suite ran (make constraints), so the image runs them too.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt ".[exporter]"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# Only the wheels built above (pinned by constraints.txt) can be installed: --no-index.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels "rigwatch[exporter]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin rigwatch
# Non-root: NVML needs only the /dev/nvidia* nodes the toolkit adds (world read/write by
# default); where a distribution restricts them to a group, add that gid with compose's group_add.
USER 10001:10001
EXPOSE 9842
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9842/metrics', timeout=4)"]
ENTRYPOINT ["rigwatch-exporter"]
CMD ["--listen=0.0.0.0:9842"]
