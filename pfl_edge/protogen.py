"""Regenerate the protobuf and gRPC modules in pfl_edge/v1 from proto/ (developer tool)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "pfl_edge" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every source into out_dir."""
    from grpc_tools import protoc  # dev dependency only

    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_DIR)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def main() -> int:
    generate(ROOT)
    print(f"regenerated {len(proto_files())} proto files into {ROOT / 'pfl_edge' / 'v1'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
