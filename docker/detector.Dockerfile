# rigwatch detector: the ML sidecar (Flask API on a production WSGI server, one process).
# Build from the repository root:  docker build -f docker/detector.Dockerfile -t rigwatch/detector .

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY rigwatch ./rigwatch
COPY exporter ./exporter
COPY detector ./detector
# constraints.txt: the versions the test suite ran (make constraints), so the image runs them too.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt ".[detector]"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /wheels /wheels
# Only the wheels built above (pinned by constraints.txt) can be installed: --no-index.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels "rigwatch[detector]" \
    && rm -rf /wheels \
    && useradd --system --uid 10002 --no-create-home --shell /usr/sbin/nologin rigwatch \
    && mkdir -p /var/lib/rigwatch/models \
    && chown 10002:10002 /var/lib/rigwatch/models
# Non-root. The model store is a named volume initialised from this directory (owned by the
# user), so a restart loads the last good models without a refit.
USER 10002:10002
VOLUME ["/var/lib/rigwatch/models"]
EXPOSE 9843
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9843/healthz', timeout=4)"]
ENTRYPOINT ["rigwatch-detector"]
CMD ["serve", "--listen=0.0.0.0:9843", "--store=/var/lib/rigwatch/models"]
