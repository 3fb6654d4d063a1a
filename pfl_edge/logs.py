"""Logging set-up shared by the command-line tools."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO", prefix: str = "") -> None:
    """Timestamped lines on stderr; `prefix` names the process (agent id, coordinator)."""
    fmt = f"%(asctime)s {prefix + ' ' if prefix else ''}%(levelname)s %(message)s"
    logging.basicConfig(
        level=level.upper(), format=fmt, datefmt="%H:%M:%S", stream=sys.stderr, force=True
    )
    logging.getLogger("grpc").setLevel(logging.WARNING)
