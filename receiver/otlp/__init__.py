"""Receive: the OTLP transports (gRPC and HTTP), their handler, status mapping, TLS and auth."""
