"""What the sidecar reports: access log, metrics, logs, traces, admin port."""
