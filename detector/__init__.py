"""rigwatch detector: the ML sidecar scoring Prometheus and Loki data for anomalies."""
