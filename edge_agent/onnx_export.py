"""Export a model to ONNX and prove the file with onnxruntime."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pfl_edge.data.images import to_float

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduces torch."""

    path: Path
    max_abs_diff: float
    opset: int
    input_name: str
    output_name: str
    num_parameters: int
    file_bytes: int


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    path: Path,
    *,
    check_samples: npt.NDArray[np.generic] | None = None,
    opset: int = 17,
) -> ExportReport:
    """Export ``model`` (eval mode) with a dynamic batch axis, then check it with onnxruntime.

    The check runs ``check_samples`` (uint8 or float (N, C, H, W); default 16 seeded uniform
    inputs) through onnxruntime's CPU provider at a batch size other than the export's and
    compares with torch. The file is checked with onnx.checker and moved into place only if
    all of that succeeds. The model's train/eval mode is restored.
    """
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if check_samples is None:
        samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    else:
        samples = to_float(check_samples)
        if samples.ndim != 4 or samples.shape[1:] != shape or len(samples) == 0:
            raise ValueError(f"check_samples must be (N, *{shape}), got {samples.shape}")
    dummy_batch = 3 if len(samples) == 2 else 2
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad():
            expected = model(torch.from_numpy(samples).to(device)).float().cpu().numpy()
            with warnings.catch_warnings():
                # dynamo=False on purpose: the legacy TorchScript exporter is ~20x faster here
                # and handles these models; its DeprecationWarnings are expected, not news.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    model,
                    (torch.zeros(dummy_batch, *shape, device=device),),
                    tmp,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
        onnx.checker.check_model(tmp)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got: npt.NDArray[np.float32] = session.run([OUTPUT_NAME], {INPUT_NAME: samples})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime gave {got.shape}, torch {expected.shape}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    return ExportReport(
        path=path,
        max_abs_diff=float(np.max(np.abs(got - expected))),
        opset=opset,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        num_parameters=sum(p.numel() for p in model.parameters()),
        file_bytes=path.stat().st_size,
    )
