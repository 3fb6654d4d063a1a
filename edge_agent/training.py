"""Training, evaluation, soft predictions and distillation shared by every learner.

Images may be uint8 or float (N, C, H, W); they are fed as float32 in [0, 1] (``to_float``).
A training call takes its optimizer ("adam", or "sgd" = plain SGD without momentum) from an
`Optimizers` (kept for the run or fresh per call), or a fresh one if given none. Mini-batches
follow ``rng`` (reshuffled every epoch, last partial batch kept); in train mode a model with
BatchNorm skips a batch of one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from pfl_edge.data.images import to_float

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's global and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _inputs(x: npt.NDArray[np.generic]) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    return torch.from_numpy(to_float(x))


def _optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; known: adam, sgd")


class Optimizers:
    """Where one model's training calls get their optimizer.

    ``keep=False``: a fresh optimizer per call. ``keep=True``: one per kind for the model's
    life, shared by local training and distillation, its learning rate set by each call. Kept
    Adam moments scale a distillation step by the gradients training has seen; a fresh Adam
    moves every parameter by about ``lr`` on its first steps however small its gradient,
    which is what made a few distillation steps cost up to 9 points (README, KT-pFL).
    """

    def __init__(self, model: nn.Module, *, keep: bool) -> None:
        self.model, self.keep = model, keep
        self._kept: dict[str, torch.optim.Optimizer] = {}

    def get(self, name: str, lr: float) -> torch.optim.Optimizer:
        if not self.keep:
            return _optimizer(name, self.model, lr)
        opt = self._kept.get(name)
        if opt is None:
            opt = self._kept[name] = _optimizer(name, self.model, lr)
        for group in opt.param_groups:
            group["lr"] = lr
        return opt

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The kept optimizers' states by kind (empty when none is kept)."""
        return {name: opt.state_dict() for name, opt in self._kept.items()}

    def load_state_dict(self, states: Mapping[str, dict[str, Any]]) -> None:
        """Take back kept optimizers from `state_dict()`; ignored when nothing is kept."""
        if self.keep:
            for name, state in states.items():
                self.get(name, 0.0).load_state_dict(state)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recalibrate_batchnorm(
    model: nn.Module, x: npt.NDArray[np.generic], *, batch_size: int = 512
) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``x`` under the current
    weights: a train-mode forward pass without gradients, batch statistics averaged with
    equal weight (momentum None), as torch.optim.swa_utils.update_bn does. A model without
    BatchNorm, or fewer than 2 samples, leaves the model as it is; its mode is restored."""
    norms = _batchnorms(model)
    if not norms or len(x) < 2:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    device = _device(model)
    try:
        with torch.no_grad():
            for batch in _batches(x, batch_size):
                if len(batch) > 1:
                    model(batch.to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def _fit(
    model: nn.Module,
    n: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    optimizer: str,
    optimizers: Optimizers | None,
) -> float:
    """Minimise ``batch_loss(indices)`` over shuffled mini-batches of ``range(n)``; mean loss
    of the last epoch (nan if no batch was trained)."""
    if n == 0:
        raise ValueError("no training samples")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if optimizers is None:
        optimizers = Optimizers(model, keep=False)
    elif optimizers.model is not model:
        raise ValueError("these Optimizers belong to another model")
    opt = optimizers.get(optimizer, lr)
    skip_single = bool(_batchnorms(model))
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        total, count = 0.0, 0
        order = torch.from_numpy(rng.permutation(n))
        for idx in torch.split(order, batch_size):
            if skip_single and len(idx) == 1:
                continue
            opt.zero_grad()
            loss = batch_loss(idx)
            torch.autograd.backward(loss)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    return total / count if count else float("nan")


def _supervised(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Loss
) -> Callable[[torch.Tensor], torch.Tensor]:
    device = _device(model)
    return lambda idx: loss_fn(model(inputs[idx].to(device)), targets[idx].to(device))


def train_epochs(
    model: nn.Module,
    x: npt.NDArray[np.generic],
    y: npt.NDArray[np.integer],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    optimizer: str = "adam",
    optimizers: Optimizers | None = None,
) -> float:
    """Train with cross-entropy; return the mean loss over the last epoch's samples.

    Returns nan if no batch was trained (a single sample and a model with BatchNorm).
    Leaves the model in train mode.
    """
    if y.shape != (len(x),):
        raise ValueError(f"{len(x)} images but labels of shape {y.shape}")
    labels = torch.from_numpy(y.astype(np.int64))
    return _fit(
        model,
        len(x),
        _supervised(model, _inputs(x), labels, F.cross_entropy),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        rng=rng,
        optimizer=optimizer,
        optimizers=optimizers,
    )


def _batches(x: npt.NDArray[np.generic], batch_size: int) -> Iterator[torch.Tensor]:
    inputs = _inputs(x)
    for start in range(0, len(inputs), batch_size):
        yield inputs[start : start + batch_size]


def predict_logits(
    model: nn.Module, x: npt.NDArray[np.generic], *, batch_size: int = 512
) -> npt.NDArray[np.float32]:
    """Logits float32 (N, classes) in eval mode without gradients; restores the model's mode."""
    was_training = model.training
    model.eval()
    device = _device(model)
    outputs = []
    with torch.no_grad():
        for batch in _batches(x, batch_size):
            outputs.append(model(batch.to(device)).float().cpu())
    model.train(was_training)
    if not outputs:
        raise ValueError("no samples to predict")
    logits: npt.NDArray[np.float32] = torch.cat(outputs).numpy()
    return logits


def evaluate(
    model: nn.Module,
    x: npt.NDArray[np.generic],
    y: npt.NDArray[np.integer],
    *,
    batch_size: int = 512,
) -> float:
    """Accuracy in [0, 1] (eval mode, no gradients)."""
    if y.shape != (len(x),):
        raise ValueError(f"{len(x)} images but labels of shape {y.shape}")
    predicted = predict_logits(model, x, batch_size=batch_size).argmax(axis=1)
    return float(np.mean(predicted == y))


def soft_predictions(
    model: nn.Module, x: npt.NDArray[np.generic], *, temperature: float, batch_size: int = 512
) -> npt.NDArray[np.float32]:
    """softmax(logits / temperature), float32 (N, classes), eval mode."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = torch.from_numpy(predict_logits(model, x, batch_size=batch_size))
    probs: npt.NDArray[np.float32] = torch.softmax(logits / temperature, dim=1).numpy()
    return probs


def distill(
    model: nn.Module,
    x: npt.NDArray[np.generic],
    targets: npt.NDArray[np.floating],
    *,
    temperature: float,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    t2_scaling: bool = False,
    optimizer: str = "adam",
    optimizers: Optimizers | None = None,
) -> float:
    """Distil soft ``targets`` (N, classes; rows are distributions) into ``model``.

    Minimises KL(target || student) = sum_c t_c (log t_c - log s_c) with
    log s = log_softmax(logits / temperature), i.e.
    ``kl_div(log_s, t, reduction="batchmean")``: summed over classes, averaged over the
    batch; times temperature**2 if ``t2_scaling``. Returns the mean of that loss over the last
    epoch's samples (nan if no batch was trained). Leaves the model in train mode.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if targets.ndim != 2 or len(targets) != len(x):
        raise ValueError(f"targets must be ({len(x)}, classes), got shape {targets.shape}")
    if not (np.all(targets >= 0) and np.allclose(targets.sum(axis=1), 1.0, atol=1e-3)):
        raise ValueError("targets must be non-negative with rows summing to 1")
    scale = temperature**2 if t2_scaling else 1.0

    def kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"model outputs {tuple(logits.shape)}, targets {tuple(target.shape)}")
        log_student = F.log_softmax(logits / temperature, dim=1)
        return F.kl_div(log_student, target, reduction="batchmean") * scale

    return _fit(
        model,
        len(x),
        _supervised(model, _inputs(x), torch.from_numpy(targets.astype(np.float32)), kl),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        rng=rng,
        optimizer=optimizer,
        optimizers=optimizers,
    )


def train_mutual(
    model: nn.Module,
    x: npt.NDArray[np.generic],
    y: npt.NDArray[np.integer],
    public: npt.NDArray[np.generic],
    peers: npt.NDArray[np.floating],
    *,
    weight: float,
    temperature: float,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    optimizer: str = "adam",
    optimizers: Optimizers | None = None,
) -> float:
    """Cross-entropy on (x, y) plus ``weight`` times the mean over peers of
    KL(peer || softmax(logits / temperature)) on ``public`` (mutual learning).

    ``peers`` is (P, len(public), classes), rows distributions, held constant. Each step
    pairs a private mini-batch with ``batch_size`` public samples drawn by ``rng``. Returns
    the mean total loss over the last epoch's private samples (nan if no batch was trained);
    leaves the model in train mode.
    """
    if y.shape != (len(x),):
        raise ValueError(f"{len(x)} images but labels of shape {y.shape}")
    if peers.ndim != 3 or peers.shape[1] != len(public):
        raise ValueError(f"peers must be (P, {len(public)}, classes), got shape {peers.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(x) == 0 or len(public) == 0:
        raise ValueError("no training samples")
    device = _device(model)
    inputs, labels = _inputs(x), torch.from_numpy(y.astype(np.int64))
    pub = _inputs(public)
    p = torch.from_numpy(peers.astype(np.float32)).to(device)
    p_log_p = torch.xlogy(p, p)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        j = torch.from_numpy(rng.choice(len(pub), size=min(batch_size, len(pub)), replace=False))
        ce = F.cross_entropy(model(inputs[idx].to(device)), labels[idx].to(device))
        log_q = F.log_softmax(model(pub[j].to(device)) / temperature, dim=1)
        kl = (p_log_p[:, j] - p[:, j] * log_q).sum(dim=2).mean()
        return ce + weight * kl

    return _fit(
        model,
        len(inputs),
        batch_loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        rng=rng,
        optimizer=optimizer,
        optimizers=optimizers,
    )
