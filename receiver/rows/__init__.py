"""Map to rows: OTLP export requests -> OCSF-style rows (docs/mapping.md)."""
