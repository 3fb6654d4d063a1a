"""KT-pFL coefficient math: gradient, KL definition, projections, learning, partial
participation, Sim-pFL/TopK-pFL weights, Spearman."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.typing import NDArray

from coordinator.strategies import ktpfl_math as km


def soft_predictions(
    rng: np.random.Generator, k: int, r: int, c: int, scale: float = 2.0
) -> NDArray[np.float64]:
    z = rng.normal(size=(k, r, c)) * scale
    s = np.exp(z - z.max(axis=-1, keepdims=True))
    out: NDArray[np.float64] = s / s.sum(axis=-1, keepdims=True)
    return out


def two_groups(rng: np.random.Generator, per_group: int = 4, r: int = 40) -> NDArray[np.float64]:
    """Agents 0..per_group-1 predict classes 0-4, the others classes 5-9 (plus noise)."""
    logits = rng.normal(size=(2 * per_group, r, 10))
    logits[:per_group, :, :5] += 4.0
    logits[per_group:, :, 5:] += 4.0
    s = np.exp(logits / 3.0)
    out: NDArray[np.float64] = s / s.sum(axis=-1, keepdims=True)
    return out


def finite_difference(
    a: NDArray[np.float64],
    soft: NDArray[np.float64],
    sizes: NDArray[np.float64],
    lam: float,
    rho: float,
    h: float = 1e-6,
) -> NDArray[np.float64]:
    grad = np.zeros_like(a)
    for i, j in itertools.product(range(a.shape[0]), repeat=2):
        up, down = a.copy(), a.copy()
        up[i, j] += h
        down[i, j] -= h
        f_up, _ = km.objective_and_gradient(up, soft, sizes, lam=lam, rho=rho)
        f_down, _ = km.objective_and_gradient(down, soft, sizes, lam=lam, rho=rho)
        grad[i, j] = (f_up - f_down) / (2 * h)
    return grad


@pytest.mark.parametrize("on_simplex", [True, False])
def test_gradient_matches_central_finite_differences(on_simplex: bool) -> None:
    rng = np.random.default_rng(0)
    soft = soft_predictions(rng, 5, 7, 4)
    a = rng.random((5, 5)) + 0.1
    if on_simplex:
        a /= a.sum(axis=0)
    sizes = rng.integers(10, 100, 5).astype(float)
    _, grad = km.objective_and_gradient(a, soft, sizes, lam=1.3, rho=0.4)
    np.testing.assert_allclose(grad, finite_difference(a, soft, sizes, 1.3, 0.4), atol=1e-8)


def test_objective_is_batchmean_kl_of_target_to_student() -> None:
    rng = np.random.default_rng(1)
    soft = soft_predictions(rng, 3, 6, 5)
    a = km.project_simplex(rng.random((3, 3)))
    sizes = np.array([10.0, 30.0, 60.0])
    value, _ = km.objective_and_gradient(a, soft, sizes, lam=2.0, rho=0.0)
    expected = 0.0
    for n in range(3):
        t = sum(a[m, n] * soft[m] for m in range(3))
        # KL(t || s_n): summed over classes, averaged over the 6 public samples.
        kl = np.mean(np.sum(t * (np.log(t) - np.log(soft[n])), axis=1))
        expected += sizes[n] / sizes.sum() * kl
    assert value == pytest.approx(2.0 * expected, rel=1e-12)
    reverse = sum(
        sizes[n]
        / sizes.sum()
        * np.mean(
            np.sum(
                soft[n] * (np.log(soft[n]) - np.log(sum(a[m, n] * soft[m] for m in range(3)))),
                axis=1,
            )
        )
        for n in range(3)
    )
    assert abs(2.0 * reverse - value) > 1e-3


def test_regulariser_pulls_towards_uniform() -> None:
    a = np.array([[0.7, 0.1], [0.3, 0.9]])
    soft = np.full((2, 3, 4), 0.25)
    value, grad = km.objective_and_gradient(a, soft, np.ones(2), lam=1.0, rho=0.5)
    assert value == pytest.approx(0.5 * np.sum((a - 0.5) ** 2))
    np.testing.assert_allclose(grad, a - 0.5)


def brute_force_projection(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """Euclidean projection onto the simplex by trying every support (KKT)."""
    best, best_dist = None, np.inf
    for size in range(1, len(v) + 1):
        for support in itertools.combinations(range(len(v)), size):
            x = np.zeros_like(v)
            idx = list(support)
            x[idx] = v[idx] - (v[idx].sum() - 1.0) / size
            if (x >= -1e-12).all() and np.sum((x - v) ** 2) < best_dist:
                best, best_dist = x, np.sum((x - v) ** 2)
    assert best is not None
    return best


def test_simplex_projection_is_the_euclidean_projection() -> None:
    rng = np.random.default_rng(2)
    for k in (1, 2, 3, 4, 5):
        v = rng.normal(size=(k, 6)) * 2
        p = km.project_simplex(v)
        assert (p >= 0).all()
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-12)
        for col in range(6):
            np.testing.assert_allclose(p[:, col], brute_force_projection(v[:, col]), atol=1e-10)


def test_simplex_projection_ignores_a_constant_per_column() -> None:
    rng = np.random.default_rng(3)
    v = rng.random((6, 6))
    shifted = v + np.arange(6) * 0.37
    np.testing.assert_allclose(km.project_simplex(v), km.project_simplex(shifted), atol=1e-12)
    on = km.project_simplex(v)
    np.testing.assert_allclose(km.project_simplex(on), on, atol=1e-12)


def test_update_variants_keep_their_contracts() -> None:
    rng = np.random.default_rng(4)
    soft = soft_predictions(rng, 4, 10, 3)
    a = np.full((4, 4), 0.25)
    sizes = np.ones(4)
    kw = {"lr": 2.0, "lam": 1.0, "rho": 0.1}
    simplex, _ = km.update(a, soft, sizes, projection="simplex", **kw)
    softmax, _ = km.update(a, soft, sizes, projection="softmax", softmax_scale=5.0, **kw)
    raw, _ = km.update(a, soft, sizes, projection="none", **kw)
    _, grad = km.objective_and_gradient(a, soft, sizes, lam=1.0, rho=0.1)
    np.testing.assert_allclose(raw, a - 2.0 * grad)
    for valid in (simplex, softmax):
        assert (valid >= 0).all()
        np.testing.assert_allclose(valid.sum(axis=0), 1.0)
    z = np.exp(5.0 * raw)
    np.testing.assert_allclose(softmax, z / z.sum(axis=0))
    np.testing.assert_allclose(simplex, km.project_simplex(raw))
    with pytest.raises(ValueError, match="projection"):
        km.update(a, soft, sizes, projection="clamp", **kw)  # type: ignore[arg-type]


def test_c_learns_to_weight_same_group_peers_within_a_few_updates() -> None:
    rng = np.random.default_rng(5)
    soft = two_groups(rng)
    n = soft.shape[0]
    c = np.full((n, n), 1.0 / n)
    idx = np.arange(n)
    for _ in range(3):
        c, _ = km.update_block(
            c, idx, soft, np.full(n, 100.0), lr=1.0, lam=1.0, rho=0.1, projection="simplex"
        )
    group = np.arange(n) // (n // 2)
    same = group[:, None] == group[None, :]
    peers = ~np.eye(n, dtype=bool)
    for student in range(n):
        col = c[:, student]
        assert col[same[:, student] & peers[:, student]].min() > col[~same[:, student]].max()
    np.testing.assert_allclose(c.sum(axis=0), 1.0)
    assert km.spearman(c[peers], same[peers].astype(float)) > 0.8


def test_partial_participation_changes_only_the_sampled_block() -> None:
    rng = np.random.default_rng(6)
    n = 7
    c = km.project_simplex(rng.random((n, n)))
    idx = np.array([1, 3, 4])
    soft = soft_predictions(rng, 3, 12, 5)
    new, _ = km.update_block(
        c, idx, soft, np.array([5.0, 10.0, 20.0]), lr=1.0, lam=1.0, rho=0.1, projection="simplex"
    )
    block = np.zeros((n, n), dtype=bool)
    block[np.ix_(idx, idx)] = True
    np.testing.assert_array_equal(new[~block], c[~block])
    assert not np.allclose(new[block], c[block])
    np.testing.assert_allclose(new.sum(axis=0), c.sum(axis=0), atol=1e-12)
    assert (new >= 0).all()


def test_block_weights_and_mixture_are_distributions() -> None:
    rng = np.random.default_rng(7)
    c = km.project_simplex(rng.random((5, 5)))
    idx = np.array([0, 2, 4])
    w = km.block_weights(c, idx)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    np.testing.assert_allclose(w[:, 0], c[idx, 0] / c[idx, 0].sum())
    soft = soft_predictions(rng, 3, 4, 6).astype(np.float32)
    t = km.mixture(w, soft)
    assert t.dtype == np.float32
    np.testing.assert_allclose(t[1], sum(w[m, 1] * soft[m] for m in range(3)), rtol=1e-5)
    np.testing.assert_allclose(t.sum(axis=-1), 1.0, rtol=1e-5)
    negative = np.array([[1.5, 0.5, 0.5], [-0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    t = km.mixture(negative, soft)
    assert (t > 0).all()
    np.testing.assert_allclose(t.sum(axis=-1), 1.0, rtol=1e-5)


def test_as_distributions_floors_and_renormalises() -> None:
    soft = np.array([[0.5, 0.5, 0.0], [1.02, -0.01, 0.0]], dtype=np.float32)
    out = km.as_distributions(soft)
    assert out.dtype == np.float32
    assert (out > 0).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)


def test_grow_keeps_columns_on_the_simplex() -> None:
    c = km.project_simplex(np.random.default_rng(8).random((3, 3)))
    g = km.grow(c, 5)
    np.testing.assert_allclose(g.sum(axis=0), 1.0)
    np.testing.assert_allclose(g[3:, :], 0.2)
    np.testing.assert_allclose(g[:3, :3], c * 3 / 5)
    np.testing.assert_allclose(km.grow(np.zeros((0, 0)), 4), 0.25)
    with pytest.raises(ValueError):
        km.grow(g, 2)


def test_sim_weights() -> None:
    rng = np.random.default_rng(9)
    soft = two_groups(rng, per_group=3)
    w = km.sim_weights(soft)
    cos = km.cosine_similarity(soft)
    np.testing.assert_allclose(cos, cos.T)
    np.testing.assert_allclose(np.diag(cos), 1.0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert (w >= 0).all()
    for n in range(6):
        assert w[:, n].argmax() == n
        assert w[cos[:, n].argmin(), n] == 0.0
        expected = (cos[:, n] - cos[:, n].min()) / (cos[:, n] - cos[:, n].min()).sum()
        np.testing.assert_allclose(w[:, n], expected)
    np.testing.assert_allclose(km.sim_weights(soft[:1]), [[1.0]])


def test_topk_weights() -> None:
    rng = np.random.default_rng(10)
    soft = two_groups(rng, per_group=4)
    w = km.topk_weights(soft, 4)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert set(np.unique(w)) == {0.0, 0.25}
    group = np.arange(8) // 4
    for n in range(8):
        assert w[n, n] == 0.25
        assert set(np.flatnonzero(w[:, n])) == set(np.flatnonzero(group == group[n]))
    np.testing.assert_allclose(km.topk_weights(soft, 20), 1 / 8)
    np.testing.assert_allclose(km.topk_weights(soft, 1), np.eye(8))
    with pytest.raises(ValueError):
        km.topk_weights(soft, 0)


def test_spearman() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert km.spearman(x, x**3) == pytest.approx(1.0)
    assert km.spearman(x, -x) == pytest.approx(-1.0)
    np.testing.assert_allclose(
        km.rank_average(np.array([10.0, 20.0, 10.0, 30.0])), [1.5, 3.0, 1.5, 4.0]
    )
    # Ties: ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4): Pearson of the ranks.
    a, b = np.array([1.5, 1.5, 3, 4]), np.arange(1.0, 5.0)
    expected = np.corrcoef(a, b)[0, 1]
    assert km.spearman(np.array([0.0, 0.0, 1.0, 2.0]), b) == pytest.approx(expected)
    assert np.isnan(km.spearman(np.ones(3), x[:3]))
