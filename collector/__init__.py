"""labtel.collector: OTLP receivers, processors and exporters wired by `otel-config.yaml`."""
