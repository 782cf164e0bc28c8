"""Generate the seriesflow.v1 Python stubs from proto/ with grpcio-tools.

Usage: python scripts/gen_proto.py [OUTPUT_ROOT]   (default: the repository root)

The stubs are committed; tests/test_proto_stubs.py regenerates them into a temporary
folder and fails if they differ, so an edited .proto without `make proto` cannot land.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def generate(output_root: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto under proto/."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return [output_root / p.relative_to(PROTO_ROOT).parent for p in protos]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for folder in generate(out):
        print(f"generated stubs in {folder}")
