"""otad's API definition: the committed generated code matches proto/otad/v1 (regenerated into a temporary
directory with the pinned grpcio-tools), and buf (its PyPI wheel, dev extra) finds nothing to lint."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GEN = ROOT / "receiver" / "api" / "gen"


def _load_generator():
    spec = importlib.util.spec_from_file_location("otad_proto_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    _load_generator().generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in GEN.iterdir() if p.is_file()}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"receiver/api/gen is stale ({', '.join(stale)}): run make proto and commit the result"


def test_buf_lint():
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        pytest.skip("buf (buf-bin, dev extra) is not installed")
    result = subprocess.run([buf, "lint"], cwd=ROOT / "proto", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_package_imports():
    from receiver.api.gen import anomalies_pb2_grpc, feedback_pb2_grpc, models_pb2_grpc

    names = {
        m.DESCRIPTOR.services_by_name[s].full_name
        for m, s in (
            (anomalies_pb2_grpc.otad_dot_v1_dot_anomalies__pb2, "AnomalyService"),
            (feedback_pb2_grpc.otad_dot_v1_dot_feedback__pb2, "FeedbackService"),
            (models_pb2_grpc.otad_dot_v1_dot_models__pb2, "ModelService"),
        )
    }
    assert names == {"otad.v1.AnomalyService", "otad.v1.FeedbackService", "otad.v1.ModelService"}
