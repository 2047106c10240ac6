"""The RPCs of proto/otad/v1 by path ("/otad.v1.AnomalyService/ListAnomalies"), for the server and the client
(light: only the generated messages, so `otad` commands that call the API load no model code)."""

from __future__ import annotations

from google.protobuf.descriptor import MethodDescriptor

from receiver.api.gen import anomalies_pb2, feedback_pb2, models_pb2

__all__ = ["METHODS", "SERVICES"]

SERVICES = (
    anomalies_pb2.DESCRIPTOR.services_by_name["AnomalyService"],
    feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"],
    models_pb2.DESCRIPTOR.services_by_name["ModelService"],
)
METHODS: dict[str, MethodDescriptor] = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
