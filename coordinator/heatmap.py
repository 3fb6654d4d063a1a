"""Heatmap of a knowledge coefficient matrix (KT-pFL's c) as a PNG.

matplotlib is imported on the first call and drawn through its Agg canvas directly, so
no global backend is selected and no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_TICK_LABELS = 40
"""Above this many agents the axes show positions instead of agent ids."""


def save_heatmap(
    c: np.ndarray, agent_ids: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Draw c[m, n] (rows: teacher m, columns: student n) to `path` (PNG); returns it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = np.asarray(c, dtype=np.float64)
    n = len(agent_ids)
    if c.shape != (n, n):
        raise ValueError(f"c has shape {list(c.shape)} for {n} agent ids")
    side = min(12.0, 3.0 + 0.25 * n)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(c, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="c[m, n]")
    if 0 < n <= MAX_TICK_LABELS:
        ax.set_xticks(range(n), labels=list(agent_ids), rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=list(agent_ids), fontsize=7)
    ax.set_xlabel("student n (column: weights of its teachers)")
    ax.set_ylabel("teacher m")
    ax.set_title(title or f"knowledge coefficients c ({n} agents)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    return out
