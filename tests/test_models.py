"""Model zoo: shapes, sizes, trainability and ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_agent.models import MODELS, build_model, parameter_count
from edge_agent.onnx_export import export_onnx

# Tiny batches gain nothing from intra-op threads, and spinning OpenMP threads slow the
# suite several-fold on a busy machine.
torch.set_num_threads(1)

SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_size_and_one_step(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 7)
    assert 10_000 <= parameter_count(model) <= (100_000 if shape[1] == 28 else 150_000)
    x = torch.rand(8, *shape)
    y = torch.arange(8) % 7
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout mask before and after the step
        return F.cross_entropy(model(x), y)

    before = loss()
    assert model(x).shape == (8, 7)
    opt.zero_grad()
    torch.autograd.backward(before)
    opt.step()
    assert loss().item() < before.item()


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_export(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10)
    with torch.no_grad():  # move BatchNorm running statistics away from their defaults
        for _ in range(3):
            model(torch.rand(16, 1, 28, 28) * 2)
    samples = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    report = export_onnx(model, (1, 28, 28), tmp_path / f"{name}.onnx", check_samples=samples)
    assert report.max_abs_diff < 1e-4
    assert report.file_bytes == report.path.stat().st_size > 0
    assert report.num_parameters == parameter_count(model)
    assert (report.input_name, report.output_name, report.opset) == ("input", "logits", 17)
    assert model.training  # mode restored
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]


def test_export_rejects_mismatched_samples(tmp_path: Path) -> None:
    model = build_model("lenet5", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="check_samples must be"):
        export_onnx(model, (1, 28, 28), tmp_path / "m.onnx", check_samples=np.zeros((2, 3, 28, 28)))
    assert list(tmp_path.iterdir()) == []


def test_build_model_errors() -> None:
    with pytest.raises(
        ValueError, match="unknown model 'vgg'; known models: lenet5, alexnet_small"
    ):
        build_model("vgg", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="H, W >= 16"):
        build_model("lenet5", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("lenet5", (1, 28, 28), 1)
