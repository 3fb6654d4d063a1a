"""On-device inference with onnxruntime only: this module must not import torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pfl_edge.data._npz import load_npz_arrays, npz_names
from pfl_edge.data.formats import read_idx
from pfl_edge.data.images import to_float

_BATCH = 1024


def load_inputs(path: Path) -> npt.NDArray[np.float32]:
    """Read images from .npy, .npz (key ``x``, else ``x_test``, else its only array) or an IDX
    image file (gzip or not); return float32 in [0, 1], shape as stored (IDX: (N, 1, H, W)).
    """
    path = Path(path)
    if path.suffix == ".npy":
        with path.open("rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ValueError(f"{path}: not a .npy file")
        x = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        names = npz_names(path)
        known = [k for k in ("x", "x_test") if k in names]
        if not known and len(names) != 1:
            raise ValueError(f"{path}: no 'x' or 'x_test' array among {names}")
        key = (known or names)[0]
        x = load_npz_arrays(path, [key])[key]
    else:
        try:
            x = read_idx(path)
        except ValueError as exc:
            raise ValueError(f"{exc} (inputs must be .npy, .npz or an IDX image file)") from exc
        if x.ndim != 3:
            raise ValueError(f"{path}: IDX of shape {x.shape} is not images (N, H, W)")
        x = x[:, None]
    return to_float(x)


def _session(model_path: Path) -> ort.InferenceSession:
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"no model file {model_path}")
    try:
        return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exception classes
        raise ValueError(f"{model_path}: cannot load ONNX model ({exc})") from exc


def _as_batch(x: npt.NDArray[np.float32], chw: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Promote one image (C, H, W), or (H, W) / (N, H, W) when C = 1, to (N, C, H, W)."""
    if chw[0] == 1 and x.shape == chw[1:]:
        x = x[None, None]
    elif x.shape == chw:
        x = x[None]
    elif chw[0] == 1 and x.ndim == 3 and x.shape[1:] == chw[1:]:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != chw:
        expected = ", ".join(map(str, chw))
        raise ValueError(f"inputs of shape {x.shape} do not fit the model's input (N, {expected})")
    return x


def predict(model_path: Path, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """Logits float32 (N, classes) of the ONNX model for uint8 or [0, 1] float images."""
    session = _session(model_path)
    spec = session.get_inputs()[0]
    chw = tuple(spec.shape[1:])
    if len(chw) != 3 or not all(isinstance(d, int) for d in chw):
        raise ValueError(f"{model_path}: expected an input (batch, C, H, W), got {spec.shape}")
    x = _as_batch(to_float(inputs), chw)
    if not (np.all(x >= 0) and np.all(x <= 1)):
        raise ValueError("float inputs must lie in [0, 1]; pass uint8 images or scale them")
    outputs = [
        session.run(None, {spec.name: x[i : i + _BATCH]})[0] for i in range(0, len(x), _BATCH)
    ]
    if not outputs:
        raise ValueError("no inputs to predict")
    logits: npt.NDArray[np.float32] = np.concatenate(outputs).astype(np.float32, copy=False)
    return logits


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--input`` and ``--json`` for :func:`main_predict`."""
    parser.add_argument("--model", type=Path, required=True, help="ONNX model file")
    parser.add_argument(
        "--input", type=Path, required=True, help="images: .npy, .npz (x or x_test) or IDX"
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list instead of tab-separated lines"
    )


def main_predict(args: argparse.Namespace) -> int:
    """Print ``index<TAB>class<TAB>probability`` per sample (or JSON); 0 on success, 1 on error."""
    try:
        logits = predict(args.model, load_inputs(args.input))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    classes = probs.argmax(axis=1)
    rows = [(i, int(c), float(probs[i, c])) for i, c in enumerate(classes)]
    if args.json:
        print(json.dumps([{"index": i, "class": c, "probability": p} for i, c, p in rows]))
    else:
        print("\n".join(f"{i}\t{c}\t{p:.6f}" for i, c, p in rows))
    return 0
