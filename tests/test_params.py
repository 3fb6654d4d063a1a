"""Run parameters: defaults, validation, and that the distillation learner trains with
its own optimizer setting."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
import torch

from coordinator import cli, strategies
from edge_agent.learners.base import LearnerContext, TaskView
from edge_agent.learners.ktpfl import KTPFLLearner
from pfl_edge.data.partition import ClientData
from pfl_edge.params import COMMON, resolve
from tests.test_training import linear, separable, with_batchnorm

torch.set_num_threads(1)


@pytest.mark.parametrize("algorithm", ["kt-pfl", "fedh2l"])
def test_listed_parameters_paste_into_the_config_as_toml(
    algorithm: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pfl-coordinator algorithms --params NAME` prints TOML that reads back as the defaults
    (booleans as true/false, strings quoted)."""
    assert cli.main(["algorithms", "--params", algorithm]) == 0
    listed = tomllib.loads(capsys.readouterr().out)
    assert listed == {**COMMON, **strategies.get(algorithm).params}
    assert listed["recalibrate_bn"] is True


def test_defaults_and_overrides() -> None:
    out = resolve(COMMON, {"distill_optimizer": "sgd", "distill_lr": 1})
    assert out["distill_optimizer"] == "sgd" and out["distill_lr"] == 1.0
    assert out["optimizer"] == COMMON["optimizer"]


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"distil_lr": 0.1}, "unknown algorithm parameter"),
        ({"distill_optimizer": "rmsprop"}, "must be one of"),
        ({"optimizer": "lbfgs"}, "must be one of"),
        ({"optimizer_state": "epoch"}, "must be one of"),
        ({"distill_lr": "fast"}, "must be float"),
        ({"t2_scaling": 1}, "must be bool"),
        ({"local_epochs": -1}, "must not be negative"),
    ],
)
def test_bad_values_are_refused_with_the_reason(given: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve(COMMON, given)


def test_distillation_uses_distill_optimizer_and_local_training_optimizer() -> None:
    x, y = separable(64, 0)
    public = separable(32, 1)[0]
    params = {**COMMON, "optimizer": "adam", "distill_optimizer": "sgd", "distill_lr": 0.0}
    ctx = LearnerContext(
        "a", linear(), ClientData(x, y, x[:8], y[:8]), public, params, 2, np.random.default_rng(0)
    )
    learner = KTPFLLearner(ctx)
    view = TaskView(1, 0, "train_predict", {}, {}, np.arange(32))
    soft = learner.handle(view).tensors["soft"]
    before = [p.detach().clone() for p in ctx.model.parameters()]
    target = np.full_like(soft, 0.5)  # far from soft: a non-zero gradient
    learner.handle(TaskView(1, 1, "distill", {"target": target}, {}, np.arange(32)))
    # distill_lr, not lr (1e-3), set the step: 0 leaves the model exactly as it was
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters(), strict=True))
    ctx_bad = LearnerContext(
        "b", linear(), ctx.data, public, {**params, "distill_optimizer": "rmsprop"}, 2, ctx.rng
    )
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        KTPFLLearner(ctx_bad).handle(
            TaskView(1, 1, "distill", {"target": target}, {}, np.arange(32))
        )


@pytest.mark.parametrize(
    ("given", "keep"),
    [({}, True), ({"optimizer_state": "run"}, True), ({"optimizer_state": "call"}, False)],
)
def test_learner_keeps_its_optimizer_unless_told_otherwise(
    given: dict[str, str], keep: bool
) -> None:
    """A run config without optimizer_state (an older coordinator) gets the default."""
    x, y = separable(8, 0)
    params = {k: v for k, v in COMMON.items() if k != "optimizer_state"} | given
    ctx = LearnerContext(
        "a", linear(), ClientData(x, y, x, y), x, params, 2, np.random.default_rng(0)
    )
    assert KTPFLLearner(ctx).optimizers.keep is keep


@pytest.mark.parametrize("recalibrate", [True, False])
def test_learner_recalibrates_batchnorm_on_private_data_after_distillation(
    recalibrate: bool,
) -> None:
    """Distilling on a brighter public batch: with recalibrate_bn the running mean is that
    of the private images again; without, it keeps a trace of the public batch."""
    torch.manual_seed(0)
    x, y = separable(32, 0)
    public = np.clip(x.astype(np.int64) + 90, 0, 255).astype(np.uint8)
    model = with_batchnorm()
    params = dict(COMMON) | {"recalibrate_bn": recalibrate}
    ctx = LearnerContext(
        "a", model, ClientData(x, y, x, y), public, params, 2, np.random.default_rng(0)
    )
    learner = KTPFLLearner(ctx)
    target = np.full((32, 2), 0.5, dtype=np.float32)
    learner.handle(TaskView(1, 1, "distill", {"target": target}, {}, np.arange(32)))
    with torch.no_grad():
        private_mean = model[:2](torch.from_numpy(x.astype(np.float32) / 255)).mean(0)
    close = torch.allclose(model[2].running_mean, private_mean, rtol=1e-5, atol=1e-6)
    assert close is recalibrate
