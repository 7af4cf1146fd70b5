"""rigwatch GPU/container exporter: NVML and the Docker API turned into Prometheus metrics."""
