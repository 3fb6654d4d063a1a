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
    c: np.ndarray,
    agent_ids: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    columns: Sequence[str] | None = None,
    xlabel: str = "student n (column: weights of its teachers)",
    ylabel: str = "teacher m",
    value_label: str = "c[m, n]",
) -> Path:
    """Draw c[m, n] (rows: teacher m, columns: student n) to `path` (PNG); returns it.

    Any matrix works: `agent_ids` labels the rows, `columns` the columns (default: the
    same labels), and the axis and colour-bar titles can be given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = np.asarray(c, dtype=np.float64)
    rows = list(agent_ids)
    cols = rows if columns is None else list(columns)
    n, k = len(rows), len(cols)
    if c.shape != (n, k):
        what = f"{n} agent ids" if columns is None else f"{n} row and {k} column labels"
        raise ValueError(f"c has shape {list(c.shape)} for {what}")
    side = min(12.0, 3.0 + 0.25 * max(n, k))
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(c, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=value_label)
    if 0 < k <= MAX_TICK_LABELS:
        ax.set_xticks(range(k), labels=cols, rotation=90, fontsize=7)
    if 0 < n <= MAX_TICK_LABELS:
        ax.set_yticks(range(n), labels=rows, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"knowledge coefficients c ({n} agents)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    return out
