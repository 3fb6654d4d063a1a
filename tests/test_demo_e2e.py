"""The main job end to end: `pfl-edge demo` starts a coordinator and agents as separate
processes on loopback gRPC; its report holds what the README promises, and each
agent's model.onnx serves predictions through `pfl-agent predict` without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pfl_edge.data.partition import load_client

AGENTS = 4
ROUNDS = 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    cmd = [
        sys.executable,
        "-m",
        "pfl_edge.cli",
        "demo",
        "--algorithm",
        "fedmd",
        "--agents",
        str(AGENTS),
        "--rounds",
        str(ROUNDS),
        "--samples-per-agent",
        "200",
        "--local-epochs",
        "2",
        "--public-samples",
        "1000",
        "--public-per-round",
        "200",
        "--out",
        str(out),
        "--timeout",
        "400",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=450)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round 2/2 done" in proc.stderr
    return out


def test_report_has_the_promised_fields(demo: Path) -> None:
    report = json.loads((demo / "report.json").read_text())
    assert report["algorithm"] == "fedmd" and report["transport"] == "grpc"
    assert len(report["agents"]) == AGENTS
    assert {a["model"] for a in report["agents"]} == {
        "lenet5",
        "alexnet_small",
        "resnet_small",
        "shufflenet_small",
    }
    for a in report["agents"]:
        for key in (
            "id",
            "model",
            "params",
            "train_samples",
            "final_test_acc",
            "onnx_max_abs_diff",
            "bytes_up",
            "bytes_down",
        ):
            assert a[key] is not None, key
        assert a["onnx_max_abs_diff"] < 1e-4
        assert 0.0 <= a["final_test_acc"] <= 1.0
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert r["participants"] == AGENTS and r["bytes_up"] > 0 and r["bytes_down"] > 0
    final = report["final"]
    assert final["bytes_up_per_agent_round"] < final["param_bytes_per_agent"] / 20
    assert 0.0 <= final["orchestration_share"] <= 1.0
    assert 1.0 <= final["wire_overhead"] < 1.2
    assert (demo / "report.png").stat().st_size > 10_000


def test_predict_runs_on_onnxruntime_without_torch(demo: Path) -> None:
    model = demo / "agents" / "agent-00" / "model.onnx"
    data = load_client(demo / "data" / "agent-00.npz")
    inputs = demo / "inputs.npy"
    np.save(inputs, data.x_test[:5])
    code = (
        "import sys; from edge_agent.cli import main; "
        f"rc = main(['predict', '--model', {str(model)!r}, '--input', {str(inputs)!r}]); "
        "assert 'torch' not in sys.modules, 'predict imported torch'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5
    assert all(0 <= int(line.split("\t")[1]) < 10 for line in lines)
