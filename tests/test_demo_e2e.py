"""The main job end to end: `pfl-edge demo` starts a coordinator and agents as separate
processes on loopback gRPC; its report holds what the README promises, and each
agent's model.onnx serves predictions through `pfl-agent predict` without torch. The same
demo over MQTT (through a mosquitto the demo starts itself) writes the same report."""

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


def run_demo(out: Path, *extra: str) -> str:
    """Run the small demo into `out`; its log (stderr)."""
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
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=450)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round 2/2 done" in proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    run_demo(out)
    return out


def check_report(out: Path, transport: str) -> None:
    """report.json and report.png hold what the README promises."""
    report = json.loads((out / "report.json").read_text())
    assert report["algorithm"] == "fedmd" and report["transport"] == transport
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
    assert 0.95 < final["accounting_vs_socket"] <= 1.0
    assert (out / "report.png").stat().st_size > 10_000


def test_report_has_the_promised_fields(demo: Path) -> None:
    check_report(demo, "grpc")


def test_mqtt_demo_starts_a_broker_and_writes_the_same_report(
    demo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("mqtt-demo")
    log = run_demo(out, "--transport", "mqtt")
    assert "no --broker given: started mosquitto on mqtt://127.0.0.1:" in log
    check_report(out, "mqtt")
    grpc, mqtt = (json.loads((d / "report.json").read_text()) for d in (demo, out))
    assert set(mqtt) == set(grpc)
    for part in ("final", "agents", "rounds"):
        assert keys(mqtt[part]) == keys(grpc[part]), part


def keys(part: dict[str, object] | list[dict[str, object]]) -> set[str]:
    """The field names of a report section (of every entry of a list)."""
    entries = part if isinstance(part, list) else [part]
    return {k for entry in entries for k in entry}


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
