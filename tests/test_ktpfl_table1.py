"""The bookkeeping of benchmarks/ktpfl_table1.py: seed means, the issue's targets, and
the settings check that guards --add-to and the oracle's pairing."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from benchmarks import ktpfl_table1 as t1
from coordinator.strategies.ktpfl import KTPFL
from pfl_edge.params import COMMON


def entry(algorithm: str, noniid: str, seed: int, acc: float, **extra: Any) -> dict[str, Any]:
    return {
        "algorithm": algorithm,
        "noniid": noniid,
        "public": "mnist",
        "seed": seed,
        "final_mean_test_acc": acc,
        "final_mean_test_acc_before_distill": acc + 0.01,
        "per_architecture": {"lenet5": {"test_acc": acc}},
        "bytes_up_per_agent_round": 1000.0,
        "param_bytes_per_agent": 40_000.0,
        **extra,
    }


def test_summarise_means_over_seeds() -> None:
    rows = t1.summarise(
        [entry("fedmd", "dirichlet", 1, 0.80), entry("fedmd", "dirichlet", 2, 0.90)]
    )
    (row,) = rows
    assert row["seeds"] == 2
    assert row["acc"] == pytest.approx(0.85)
    assert row["acc_std_over_seeds"] == pytest.approx(0.05)
    assert row["acc_before_distill"] == pytest.approx(0.86)


def test_targets_are_judged_on_seed_means() -> None:
    results = [
        entry("local", "dirichlet", 1, 0.80),
        entry("local", "dirichlet", 2, 0.82),
        entry("fedmd", "dirichlet", 1, 0.84),
        entry("fedmd", "dirichlet", 2, 0.84),
        # +3.5 over local on seed 1 only: the mean gap is +2.9, a miss
        entry("kt-pfl", "dirichlet", 1, 0.835, c_similarity_spearman=0.3),
        entry("kt-pfl", "dirichlet", 2, 0.843, c_similarity_spearman=0.3),
        entry("fedmd", "classes-2", 1, 0.90),
        entry("kt-pfl", "classes-2", 1, 0.921, c_similarity_spearman=0.49),
    ]
    checks = {(c["target"], c["noniid"]): c for c in t1.check_targets(t1.summarise(results))}
    assert checks[("kt-pfl >= fedmd", "dirichlet")]["met"] is False
    local = checks[("kt-pfl >= local + 0.03", "dirichlet")]
    assert local["value"] == pytest.approx(0.029) and local["met"] is False
    assert checks[("kt-pfl >= fedmd + 0.02", "classes-2")]["met"] is True
    assert checks[("c_similarity_spearman >= 0.5", "classes-2")]["met"] is False
    uplink = checks[("uplink < 1/20 of parameter bytes", "classes-2")]
    assert uplink["value"] == pytest.approx(0.025) and uplink["met"] is True


def write_table(path: Path, s: t1.Settings, **changed: Any) -> None:
    settings = {**asdict(s), "common_params": COMMON, "ktpfl_params": KTPFL.params, **changed}
    path.write_text(json.dumps({"settings": settings, "results": [], "command": "x"}))


def test_settings_of_reads_back_a_table(tmp_path: Path) -> None:
    s = t1.Settings(train_per_agent=300, seeds=[5, 6], rounds={"dirichlet": 3, "classes-2": 2})
    write_table(tmp_path / "t.json", s)
    back, table = t1.settings_of(tmp_path / "t.json")
    assert back == s
    assert table["command"] == "x"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train_per_agent", 50),
        ("common_params", {**COMMON, "temperature": 10.0}),
        ("ktpfl_params", {**KTPFL.params, "c_lr": 0.1}),
    ],
)
def test_a_table_made_otherwise_is_refused(tmp_path: Path, key: str, value: Any) -> None:
    write_table(tmp_path / "t.json", t1.Settings(), **{key: value})
    with pytest.raises(SystemExit, match=key):
        t1.check_settings(json.loads((tmp_path / "t.json").read_text()), t1.Settings(), Path("t"))


def test_seeds_and_methods_may_differ(tmp_path: Path) -> None:
    write_table(tmp_path / "t.json", t1.Settings(seeds=[9]), workers=7, algorithms={})
    t1.check_settings(json.loads((tmp_path / "t.json").read_text()), t1.Settings(), Path("t"))
