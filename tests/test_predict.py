"""ONNX inference without torch."""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.models import build_model
from edge_agent.onnx_export import export_onnx
from edge_agent.predict import add_predict_arguments, load_inputs, main_predict, predict

# Tiny batches gain nothing from intra-op threads, and spinning OpenMP threads slow the
# suite several-fold on a busy machine.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A LeNet-5 exported to ONNX, some uint8 images and torch's logits for them."""
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10).eval()
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    export_onnx(model, (1, 28, 28), path)
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(images.astype(np.float32) / 255)).numpy()
    return path, images, logits


def test_predict_without_torch(
    tmp_path: Path, exported: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    model_path, images, torch_logits = exported
    np.save(tmp_path / "x.npy", images)
    code = (
        "import sys; import numpy as np; from pathlib import Path\n"
        "from edge_agent.predict import load_inputs, predict\n"
        f"x = load_inputs(Path({str(tmp_path / 'x.npy')!r}))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, predict(Path({str(model_path)!r}), x))\n"
        "assert 'torch' not in sys.modules, 'edge_agent.predict imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    logits = np.load(tmp_path / "out.npy")
    assert logits.dtype == np.float32 and logits.shape == (6, 10)
    np.testing.assert_array_equal(logits.argmax(1), torch_logits.argmax(1))
    np.testing.assert_allclose(logits, torch_logits, atol=1e-4)


def write_idx_gz(path: Path, images: np.ndarray) -> Path:
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", *images.shape)
    path.write_bytes(gzip.compress(header + images.tobytes()))
    return path


def test_input_formats(tmp_path: Path, exported: tuple[Path, np.ndarray, np.ndarray]) -> None:
    model_path, images, torch_logits = exported
    expected = torch_logits.argmax(1)
    np.savez(tmp_path / "client.npz", x_train=images[:2], x_test=images)
    np.savez(tmp_path / "only.npz", pictures=images)
    sources = {
        "client.npz": tmp_path / "client.npz",
        "only.npz": tmp_path / "only.npz",
        "idx": write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images[:, 0]),
    }
    for name, path in sources.items():
        x = load_inputs(path)
        assert x.dtype == np.float32, name
        np.testing.assert_array_equal(predict(model_path, x).argmax(1), expected, err_msg=name)
    one = predict(model_path, images[3, 0])  # a single (H, W) image
    assert one.shape == (1, 10) and one.argmax() == expected[3]
    assert predict(model_path, images[:, 0]).shape == (6, 10)  # (N, H, W)


def test_input_errors(tmp_path: Path, exported: tuple[Path, np.ndarray, np.ndarray]) -> None:
    model_path = exported[0]
    with pytest.raises(
        ValueError, match=r"\(4, 3, 32, 32\) do not fit the model's input \(N, 1, 28, 28\)"
    ):
        predict(model_path, np.zeros((4, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        predict(model_path, np.full((1, 1, 28, 28), 255.0))
    np.savez(tmp_path / "many.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(ValueError, match=r"no 'x' or 'x_test' array among \['a', 'b'\]"):
        load_inputs(tmp_path / "many.npz")
    (tmp_path / "image.png").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match=r"inputs must be .npy, .npz or an IDX image file"):
        load_inputs(tmp_path / "image.png")
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        predict(tmp_path / "model.onnx", np.zeros((1, 1, 28, 28), np.uint8))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    code = main_predict(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_main_predict(
    tmp_path: Path,
    exported: tuple[Path, np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_path, images, torch_logits = exported
    np.save(tmp_path / "x.npy", images)
    args = ["--model", str(model_path), "--input", str(tmp_path / "x.npy")]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [int(r[0]) for r in rows] == list(range(6))
    assert [int(r[1]) for r in rows] == torch_logits.argmax(1).tolist()
    z = torch_logits - torch_logits.max(1, keepdims=True)
    top = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).max(1)
    np.testing.assert_allclose([float(r[2]) for r in rows], top, atol=1e-5)
    code, out, _ = run_cli([*args, "--json"], capsys)
    assert code == 0
    assert [p["class"] for p in json.loads(out)] == torch_logits.argmax(1).tolist()
    code, out, err = run_cli(["--model", str(tmp_path / "none.onnx"), *args[2:]], capsys)
    assert code == 1 and out == "" and "no model file" in err
