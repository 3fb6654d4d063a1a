"""An agent's saved state: a restored agent trains on exactly as the uninterrupted one
would; someone else's, unreadable or ill-fitting state is refused with the model
untouched."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent import checkpoint
from edge_agent.training import Optimizers, seed_everything, train_epochs
from tests.test_training import linear, separable, with_batchnorm

torch.set_num_threads(1)

ME = checkpoint.Identity("run-1", "a", "tiny_bn", "kt-pfl")


def params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.flatten() for t in model.state_dict().values()]).float()


def epoch(model: torch.nn.Module, opts: Optimizers, rng: np.random.Generator) -> None:
    x, y = separable(40, 0)
    # Dropout draws from torch's generator, the batches from rng: both must be restored.
    train_epochs(model, x, y, epochs=1, batch_size=8, lr=0.01, rng=rng, optimizers=opts)


def dropout_bn() -> torch.nn.Module:
    return torch.nn.Sequential(with_batchnorm(), torch.nn.Dropout(0.3))


def test_restored_agent_continues_exactly_like_the_uninterrupted_one(tmp_path: Path) -> None:
    path = tmp_path / checkpoint.FILE_NAME
    seed_everything(0)
    model, rng = dropout_bn(), np.random.default_rng(0)
    opts = Optimizers(model, keep=True)
    epoch(model, opts, rng)
    checkpoint.save(path, ME, 3, model, opts, rng)
    epoch(model, opts, rng)  # the uninterrupted agent's next round

    seed_everything(99)  # a restarted process: other weights, other random state
    fresh, fresh_rng = dropout_bn(), np.random.default_rng(99)
    fresh_opts = Optimizers(fresh, keep=True)
    assert checkpoint.restore(path, ME, fresh, fresh_opts, fresh_rng) == 3
    epoch(fresh, fresh_opts, fresh_rng)
    torch.testing.assert_close(params(fresh), params(model), rtol=0, atol=0)


@pytest.mark.parametrize(
    "other",
    [
        replace(ME, run_uid="run-2"),
        replace(ME, agent_id="b"),
        replace(ME, model="lenet5"),
        replace(ME, algorithm="fedmd"),
    ],
)
def test_someone_elses_state_is_not_taken(
    tmp_path: Path, other: checkpoint.Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / checkpoint.FILE_NAME
    model = with_batchnorm()
    checkpoint.save(path, other, 1, model, Optimizers(model, keep=True), np.random.default_rng(0))
    mine = with_batchnorm()
    before = params(mine)
    assert (
        checkpoint.restore(path, ME, mine, Optimizers(mine, keep=True), np.random.default_rng(1))
        is None
    )
    assert torch.equal(params(mine), before)
    assert "starting from fresh weights" in caplog.text


def test_unreadable_or_ill_fitting_state_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / checkpoint.FILE_NAME
    model = with_batchnorm()
    opts, rng = Optimizers(model, keep=True), np.random.default_rng(0)
    assert checkpoint.restore(path, ME, model, opts, rng) is None  # no file yet
    path.write_bytes(b"not a torch file")
    assert checkpoint.restore(path, ME, model, opts, rng) is None
    assert "unreadable" in caplog.text
    other = linear()  # same identity, another shape: e.g. a changed --num-classes
    checkpoint.save(path, ME, 1, other, Optimizers(other, keep=True), rng)
    before = params(model)
    assert checkpoint.restore(path, ME, model, opts, rng) is None
    assert "it does not fit the model" in caplog.text
    assert torch.equal(params(model), before)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_state", None),
        ("optimizers", {"adam": {"state": {}, "param_groups": []}}),
        ("optimizers", {"rmsprop": {}}),
        ("numpy_rng", "not json"),
        ("torch_rng", torch.zeros(3)),
        ("round", None),
    ],
)
def test_a_bad_part_refuses_the_whole_state(
    tmp_path: Path, field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Our own identity but one part unusable: nothing is loaded, not even the good parts."""
    path = tmp_path / checkpoint.FILE_NAME
    seed_everything(0)
    saved = with_batchnorm()
    saved_opts = Optimizers(saved, keep=True)
    epoch(saved, saved_opts, np.random.default_rng(0))
    checkpoint.save(path, ME, 1, saved, saved_opts, np.random.default_rng(0))
    state = torch.load(path, weights_only=True)
    state[field] = value
    torch.save(state, path)
    model, rng = with_batchnorm(), np.random.default_rng(5)
    opts = Optimizers(model, keep=True)
    before, rng_before = params(model), rng.bit_generator.state
    assert checkpoint.restore(path, ME, model, opts, rng) is None
    assert "cannot be used" in caplog.text
    assert torch.equal(params(model), before)
    assert opts.state_dict() == {} and rng.bit_generator.state == rng_before


def test_a_failed_save_is_logged_and_keeps_the_previous_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / checkpoint.FILE_NAME
    model, rng = with_batchnorm(), np.random.default_rng(0)
    opts = Optimizers(model, keep=True)
    assert checkpoint.save(path, ME, 1, model, opts, rng)
    epoch(model, opts, rng)
    (tmp_path / (path.name + ".tmp")).mkdir()  # the write fails, as on a full disk
    assert not checkpoint.save(path, ME, 2, model, opts, rng)
    assert "could not save the agent state after round 2" in caplog.text
    assert checkpoint.restore(path, ME, with_batchnorm(), Optimizers(model, keep=True), rng) == 1
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert not checkpoint.save(not_a_dir / checkpoint.FILE_NAME, ME, 2, model, opts, rng)


def test_a_model_only_state_restores_the_model_and_fresh_optimizers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    full, slim = tmp_path / "full.pt", tmp_path / "slim.pt"
    seed_everything(0)
    model, rng = with_batchnorm(), np.random.default_rng(0)
    opts = Optimizers(model, keep=True)
    epoch(model, opts, rng)
    assert checkpoint.save(full, ME, 4, model, opts, rng)
    assert checkpoint.save(slim, ME, 4, model, None, rng)
    assert slim.stat().st_size < full.stat().st_size
    fresh = with_batchnorm()
    fresh_opts = Optimizers(fresh, keep=True)
    assert checkpoint.restore(slim, ME, fresh, fresh_opts, np.random.default_rng(9)) == 4
    torch.testing.assert_close(params(fresh), params(model), rtol=0, atol=0)
    assert fresh_opts.state_dict() == {}
    assert "holds no optimizer state; the optimizers start fresh" in caplog.text


def test_an_unknown_save_state_is_refused_by_the_agent_cli() -> None:
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--coordinator", "grpc://h:1"]
    cmd += ["--model", "lenet5", "--data", "x.npz", "--save-state", "optimizers"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--save-state: invalid choice: 'optimizers'" in proc.stderr
