"""The labelled workload simulator: a multi-service application emitting OTLP logs, spans and metrics."""
