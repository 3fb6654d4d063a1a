"""Refusal logging under a flood: bounded lines per window, and a count of what was left out."""

from __future__ import annotations

import logging

import pytest

from pfl_edge.logs import Throttled


def test_a_flood_of_refusals_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttled = Throttled(logging.getLogger("t"), burst=3, window_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for i in range(1000):
            throttled.warning("refused %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
        caplog.clear()
        now[0] = 10.0
        throttled.warning("refused %d", 1000)
    assert [r.getMessage() for r in caplog.records] == [
        "(997 similar lines left out in the last 10 s)",
        "refused 1000",
    ]
