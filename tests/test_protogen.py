"""The committed protobuf/gRPC modules are exactly what proto/ generates."""

from __future__ import annotations

from pathlib import Path

from pfl_edge import protogen


def test_generated_modules_match_sources(tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    committed_dir = protogen.ROOT
    stale = [
        str(rel)
        for rel in generated
        if (committed_dir / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"regenerate with `python -m pfl_edge.protogen`: {stale} differ"
    names = {p.name for p in (committed_dir / "pfl_edge" / "v1").glob("*_pb2*.py*")}
    assert names == {p.name for p in generated}, "generated files were added or removed"
