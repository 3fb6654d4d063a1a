"""Training, evaluation, soft predictions and distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edge_agent.training import (
    Optimizers,
    distill,
    evaluate,
    predict_logits,
    recalibrate_batchnorm,
    seed_everything,
    soft_predictions,
    train_epochs,
)

# Tiny batches gain nothing from intra-op threads, and spinning OpenMP threads slow the
# suite several-fold on a busy machine.
torch.set_num_threads(1)


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 1x8x8 images: class 0 bright on top, class 1 bright at the bottom, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 60, (n, 1, 8, 8))
    x[y == 0, :, :4] += 150
    x[y == 1, :, 4:] += 150
    return x.astype(np.uint8), y.astype(np.int64)


def linear(classes: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes))


def with_batchnorm() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_train_epochs_learns() -> None:
    seed_everything(0)
    x, y = separable(200, 0)
    model = linear()
    before = evaluate(model, x, y)
    loss = train_epochs(model, x, y, epochs=5, batch_size=32, lr=0.05, rng=np.random.default_rng(0))
    assert evaluate(model, x, y) > max(before, 0.95)
    assert 0 < loss < 0.3
    assert model.training


def test_seeded_runs_are_identical() -> None:
    x, y = separable(50, 1)
    weights = []
    for _ in range(2):
        seed_everything(3)
        model = nn.Sequential(linear(), nn.Dropout(0.5))
        train_epochs(model, x, y, epochs=2, batch_size=8, lr=0.01, rng=np.random.default_rng(3))
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def test_tiny_clients_and_batchnorm() -> None:
    x, y = separable(5, 2)
    rng = np.random.default_rng(0)
    # Fewer samples than a batch: trained, not dropped.
    assert np.isfinite(train_epochs(linear(), x, y, epochs=1, batch_size=32, lr=0.1, rng=rng))
    # 5 = 4 + 1: the batch of one is skipped with BatchNorm instead of raising.
    assert np.isfinite(
        train_epochs(with_batchnorm(), x, y, epochs=2, batch_size=4, lr=0.1, rng=rng)
    )
    loss = train_epochs(with_batchnorm(), x[:1], y[:1], epochs=1, batch_size=4, lr=0.1, rng=rng)
    assert np.isnan(loss)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        train_epochs(linear(), x, y, epochs=1, batch_size=4, lr=0.1, rng=rng, optimizer="rmsprop")
    with pytest.raises(ValueError, match="no training samples"):
        train_epochs(linear(), x[:0], y[:0], epochs=1, batch_size=4, lr=0.1, rng=rng)


def test_predictions_are_eval_mode_and_restore_mode() -> None:
    x, _ = separable(10, 3)
    model = nn.Sequential(linear(3), nn.Dropout(0.9))
    logits = predict_logits(model, x, batch_size=3)
    assert logits.dtype == np.float32 and logits.shape == (10, 3)
    np.testing.assert_allclose(logits, predict_logits(model, x), rtol=1e-5)  # dropout off
    probs = soft_predictions(model, x, temperature=4.0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    z = logits.astype(np.float64) / 4.0
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)
    assert model.training


def random_targets(n: int, classes: int, seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).normal(0, 3, (n, classes))
    t = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    t[0] = 0.0  # a one-hot row: t log t must count as 0
    t[0, 1] = 1.0
    out: np.ndarray = t.astype(np.float32)
    return out


@pytest.mark.parametrize("t2_scaling", [False, True])
def test_distill_loss_is_batchmean_kl_target_to_student(t2_scaling: bool) -> None:
    torch.manual_seed(0)
    x, _ = separable(16, 4)
    targets = random_targets(16, 3, 0)
    model = linear(3)
    temperature = 3.0
    z = predict_logits(model, x).astype(np.float64) / temperature
    log_s = z - z.max(axis=1, keepdims=True)
    log_s -= np.log(np.exp(log_s).sum(axis=1, keepdims=True))
    t = targets.astype(np.float64)
    log_t = np.log(np.where(t > 0, t, 1.0))
    forward_kl = float(np.sum(t * (log_t - log_s)) / len(x))  # KL(t || s), summed / batch
    reverse_kl = float(np.sum(np.exp(log_s) * (log_s - log_t)) / len(x))
    assert abs(forward_kl - reverse_kl) > 0.1  # the test can tell the directions apart
    scale = temperature**2 if t2_scaling else 1.0
    # One batch, one epoch: the returned loss is the one computed before the update.
    loss = distill(
        model,
        x,
        targets,
        temperature=temperature,
        epochs=1,
        batch_size=len(x),
        lr=0.1,
        rng=np.random.default_rng(0),
        t2_scaling=t2_scaling,
    )
    assert loss == pytest.approx(forward_kl * scale, rel=1e-5)


def test_distill_moves_student_towards_targets() -> None:
    torch.manual_seed(1)
    x, _ = separable(64, 5)
    teacher = linear(3)
    for p in teacher.parameters():
        p.data *= 10  # a confident teacher
    targets = soft_predictions(teacher, x, temperature=2.0)
    model = linear(3)

    def kl() -> float:
        s = soft_predictions(model, x, temperature=2.0).astype(np.float64)
        t = targets.astype(np.float64)
        return float(np.sum(t * (np.log(np.where(t > 0, t, 1.0)) - np.log(s))) / len(x))

    def gap() -> float:
        return float(np.abs(soft_predictions(model, x, temperature=2.0) - targets).mean())

    kl_before, gap_before = kl(), gap()
    rng = np.random.default_rng(0)
    loss = distill(model, x, targets, temperature=2.0, epochs=30, batch_size=16, lr=0.02, rng=rng)
    assert kl() < 0.05 * kl_before
    assert loss < 0.05 * kl_before
    assert gap() < 0.25 * gap_before


def test_distill_validates_targets() -> None:
    x, _ = separable(4, 6)
    rng = np.random.default_rng(0)
    kwargs = {"temperature": 1.0, "epochs": 1, "batch_size": 4, "lr": 0.1, "rng": rng}
    with pytest.raises(ValueError, match="rows summing to 1"):
        distill(linear(3), x, np.full((4, 3), 0.5, np.float32), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"targets must be \(4, classes\)"):
        distill(linear(3), x, np.full((3, 3), 1 / 3), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"model outputs \(4, 3\), targets \(4, 2\)"):
        distill(linear(3), x, np.full((4, 2), 0.5), **kwargs)  # type: ignore[arg-type]


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _nudged_self_targets(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's own soft predictions, a tenth of the way to uniform: a small gradient."""
    return 0.9 * soft_predictions(model, x, temperature=1.0) + 0.05


@pytest.mark.parametrize("keep", [True, False])
def test_kept_optimizer_carries_adam_state_from_training_into_distillation(keep: bool) -> None:
    x, y = separable(64, 4)
    seed_everything(4)
    model = linear()
    optimizers = Optimizers(model, keep=keep)
    rng = np.random.default_rng(4)
    train_epochs(model, x, y, epochs=10, batch_size=16, lr=0.01, rng=rng, optimizers=optimizers)
    targets = _nudged_self_targets(model, x)
    before = _params(model)
    distill(
        model,
        x,
        targets,
        temperature=1.0,
        epochs=1,
        batch_size=64,
        lr=0.01,
        rng=rng,
        optimizers=optimizers,
    )
    step = (_params(model) - before).abs().mean().item()
    # A fresh Adam's first step moves every parameter by about lr whatever the gradient; the
    # kept one divides this small gradient by the training gradients' second moment.
    if keep:
        assert step < 0.1 * 0.01
        state = optimizers.get("adam", 0.01).state[next(model.parameters())]
        assert int(state["step"]) == 10 * 4 + 1  # 40 training steps, then the distillation one
    else:
        assert step > 0.9 * 0.01


def test_kept_optimizer_takes_each_calls_learning_rate_and_refuses_another_model() -> None:
    model = linear()
    optimizers = Optimizers(model, keep=True)
    adam = optimizers.get("adam", 0.1)
    assert optimizers.get("adam", 0.001) is adam and adam.param_groups[0]["lr"] == 0.001
    assert optimizers.get("sgd", 0.1) is not adam
    assert Optimizers(model, keep=False).get("adam", 0.1) is not Optimizers(model, keep=False).get(
        "adam", 0.1
    )
    x, y = separable(8, 5)
    with pytest.raises(ValueError, match="another model"):
        train_epochs(
            linear(),
            x,
            y,
            epochs=1,
            batch_size=4,
            lr=0.1,
            rng=np.random.default_rng(0),
            optimizers=optimizers,
        )


def test_recalibrate_batchnorm_sets_statistics_of_the_given_data() -> None:
    """Distillation on shifted (public) images leaves running statistics of those; after
    recalibration they are exactly the mean and unbiased variance of the BatchNorm's input
    over the given images, whatever the batching, and momentum and mode are as before."""
    seed_everything(0)
    x, y = separable(40, 5)
    shifted = np.clip(x.astype(np.int64) + 90, 0, 255).astype(np.uint8)
    model = with_batchnorm()
    train_epochs(model, shifted, y, epochs=3, batch_size=8, lr=0.01, rng=np.random.default_rng(0))
    bn = model[2]
    assert isinstance(bn, nn.BatchNorm1d)
    with torch.no_grad():
        inputs = model[:2](torch.from_numpy(x.astype(np.float32) / 255))
    assert not torch.allclose(bn.running_mean, inputs.mean(0), atol=1e-2)
    model.eval()
    recalibrate_batchnorm(model, x, batch_size=40)
    torch.testing.assert_close(bn.running_mean, inputs.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, inputs.var(0), rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training
    recalibrate_batchnorm(model, x, batch_size=8)  # 5 batches, equally weighted
    torch.testing.assert_close(bn.running_mean, inputs.mean(0), rtol=1e-5, atol=1e-6)
    # One sample has no batch statistics: the model is left as it was.
    before = bn.running_var.clone()
    recalibrate_batchnorm(model, shifted[:1])
    assert torch.equal(bn.running_var, before)
