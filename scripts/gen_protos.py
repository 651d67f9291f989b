"""Generates the Python modules of our Hubble-compatible .proto files (setup step).

The .proto files under ``src/ciliary/hubble/api`` are the source of truth (upstream's package,
message and field names/numbers); their ``_pb2``/``_pb2_grpc`` modules and mypy stubs are
generated here with grpcio-tools and mypy-protobuf, never committed, and regenerated whenever a
.proto file is newer than its output (or the output is missing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

SRC = Path(__file__).resolve().parent.parent / "src"
API = SRC / "ciliary" / "hubble" / "api"


def _outputs(proto: Path) -> list[Path]:
    stem = proto.with_suffix("")
    return [
        Path(f"{stem}_pb2.py"),
        Path(f"{stem}_pb2.pyi"),
        Path(f"{stem}_pb2_grpc.py"),
        Path(f"{stem}_pb2_grpc.pyi"),
    ]


def main() -> int:
    protos = sorted(API.rglob("*.proto"))
    stale = [
        p
        for p in protos
        if any(not o.exists() or o.stat().st_mtime < p.stat().st_mtime for o in _outputs(p))
    ]
    if not stale:
        return 0
    include = Path(protoc.__file__).parent / "_proto"
    # The mypy-protobuf plugins live next to this interpreter (the venv's bin/), which need not
    # be on PATH (e.g. `.venv/bin/python scripts/gen_protos.py`), so name them explicitly.
    bindir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{SRC}",
        f"-I{include}",
        f"--python_out={SRC}",
        f"--mypy_out={SRC}",
        f"--grpc_python_out={SRC}",
        f"--mypy_grpc_out={SRC}",
        *(str(p) for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"gen_protos: protoc failed ({rc})", file=sys.stderr)
        return 1
    print(f"gen_protos: generated {len(protos)} proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
