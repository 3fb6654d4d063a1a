"""The main job end to end: `pfl-edge demo` starts a coordinator and agents as separate
processes on loopback gRPC; its report holds what the README promises, and each
agent's model.onnx serves predictions through `pfl-agent predict` without torch. The same
demo over MQTT (through a mosquitto the demo starts itself) writes the same report. Both
run over mutual TLS with a throwaway fleet; `--insecure` runs without TLS, the demo's
broker still behind per-run passwords."""

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


def demo_command(out: Path, *extra: str, rounds: int = ROUNDS, agents: int = AGENTS) -> list[str]:
    """`pfl-edge demo` of the small demo into `out`; `extra` options come last."""
    return [
        sys.executable,
        "-m",
        "pfl_edge.cli",
        "demo",
        "--algorithm",
        "fedmd",
        "--agents",
        str(agents),
        "--rounds",
        str(rounds),
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


def run_demo(out: Path, *extra: str, rounds: int = ROUNDS, agents: int = AGENTS) -> str:
    """Run the small demo into `out`; its log (stderr)."""
    cmd = demo_command(out, *extra, rounds=rounds, agents=agents)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=450)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"round {rounds}/{rounds} done" in proc.stderr
    (out / "demo.log").write_text(proc.stderr)
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


def test_grpc_demo_runs_over_mutual_tls(demo: Path) -> None:
    assert "security: mutual TLS on gRPC" in (demo / "demo.log").read_text()
    # The coordinator's own account of its listener, and the fleet it admits from.
    assert "(mutual TLS)" in (demo / "logs" / "coordinator.log").read_text()
    config = (demo / "coordinator.toml").read_text()
    assert f'grpc_tls_client_ca = "{demo / "pki" / "ca.crt"}"' in config
    assert f'fleet = "{demo / "pki" / "fleet.toml"}"' in config


def test_mqtt_demo_starts_a_broker_and_writes_the_same_report(
    demo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("mqtt-demo")
    log = run_demo(out, "--transport", "mqtt")
    assert "no --broker given: started mosquitto on mqtt://127.0.0.1:" in log
    assert "security: mutual TLS to the broker" in log
    conf = (out / "broker" / "mosquitto.conf").read_text().splitlines()
    assert {"require_certificate true", "use_identity_as_username true"} <= set(conf)
    # The agents gave no username or password and the broker admits no anonymous client:
    # the name the broker logged is the one in their certificates.
    assert "allow_anonymous false" in conf
    broker_log = (out / "broker" / "mosquitto.log").read_text()
    assert "as agent-00 (p5, c0, k60, u'agent-00')" in broker_log  # c0: a persistent session
    check_report(out, "mqtt")
    grpc, mqtt = (json.loads((d / "report.json").read_text()) for d in (demo, out))
    assert set(mqtt) == set(grpc)
    for part in ("final", "agents", "rounds"):
        assert keys(mqtt[part]) == keys(grpc[part]), part


def test_insecure_demo_runs_without_tls_behind_per_run_passwords(
    tmp_path: Path,
) -> None:
    log = run_demo(
        tmp_path, "--transport", "mqtt", "--insecure", "--models", "lenet5", rounds=1, agents=2
    )
    assert "security: --insecure: MQTT without TLS" in log
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text().splitlines()
    assert not [line for line in conf if line.split(" ")[0] in ("cafile", "certfile")]
    assert "allow_anonymous false" in conf
    broker_log = (tmp_path / "broker" / "mosquitto.log").read_text()
    assert "u'agent-01'" in broker_log and "u'coordinator'" in broker_log
    report = json.loads((tmp_path / "report.json").read_text())
    assert [a["id"] for a in report["agents"]] == ["agent-00", "agent-01"]


def test_demo_refuses_an_operators_broker_without_insecure(tmp_path: Path) -> None:
    cmd = demo_command(tmp_path, "--transport", "mqtt", "--broker", "mqtt://127.0.0.1:1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "the demo cannot give your broker its certificates" in proc.stderr
    assert "add --insecure" in proc.stderr


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
