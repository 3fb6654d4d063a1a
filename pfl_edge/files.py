"""Files written so that a reader sees the old content or the new, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, secret: bool = False) -> None:
    """Write `path` through a new temporary file in its folder, then rename it over.

    `secret` files are 0600 from the start (never readable by others, even for a
    moment), others 0644. The temporary file is a new one (mkstemp: 0600, O_EXCL), so a
    stale or planted file of a fixed name cannot lend the content its mode or owner, and
    two writers at once cannot interleave (the last rename wins whole)."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if not secret:
                os.fchmod(f.fileno(), 0o644)
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
