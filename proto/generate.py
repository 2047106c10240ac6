"""Generate otad's API code from proto/otad/v1/*.proto into receiver/api/gen/ (`make proto`).

protoc from grpcio-tools (pinned in the dev extra to grpcio's release) writes `*_pb2.py`, `*_pb2.pyi` and
`*_pb2_grpc.py`. protoc's Python output imports a sibling file by its proto package path (`from otad.v1
import common_pb2`); otad ships the code as the package `receiver.api.gen`, so those imports are rewritten to
it (the descriptors keep their proto names, `otad/v1/common.proto`, which grpcurl and reflection see).
The output depends only on the .proto files and the pinned grpcio-tools: tests/unit/receiver/test_api_proto.py
regenerates into a temporary directory and fails when the committed code differs.

Usage: python proto/generate.py [OUTPUT_DIR]   (default: receiver/api/gen)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("otad/v1")
PYTHON_PACKAGE = "receiver.api.gen"
HEADER = '"""Generated from proto/otad/v1/*.proto by proto/generate.py (make proto); do not edit."""\n'


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules (and an __init__.py) into `out_dir`; returns the files written."""
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed (see above)")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / PACKAGE_DIR).iterdir()):
            text = src.read_text()
            text = text.replace("from otad.v1 import ", f"from {PYTHON_PACKAGE} import ")
            target = out_dir / src.name
            target.write_text(text)
            written.append(target)
    init = out_dir / "__init__.py"
    init.write_text(HEADER)
    return [init, *written]


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "receiver" / "api" / "gen"
    if out.exists():
        for stale in out.glob("*_pb2*.py*"):
            stale.unlink()
    files = generate(out)
    shutil.rmtree(out / "__pycache__", ignore_errors=True)
    sys.stdout.write(f"generated {len(files)} files in {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
