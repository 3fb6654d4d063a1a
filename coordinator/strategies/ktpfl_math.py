"""The numpy math of KT-pFL (Zhang et al. 2021, eq. (2), (4)-(7)) and of its variants.

Convention: a coefficient matrix is square, indexed [teacher m, student n]; column n
holds the weights of agent n's teachers (self included), so agent n's personalized
target is the mixture t_n = sum_m c[m, n] * s_m of the soft predictions s_m
(eq. 2 and 6). Validity means every column lies on the probability simplex.

Objective of one c update (eq. 7), for the k agents of a round:

    J(a) = lambda * sum_n w_n * KL(t_n || s_n) + rho * sum_{m,n} (a[m, n] - 1/k)^2

- a is the round's k x k block of c with each column divided by its sum (with full
  participation and a valid c this is c itself). t_n = sum_m a[m, n] s_m / sum_m a[m, n]:
  the division is an identity on the simplex; it keeps J scale-invariant per column, so
  the constant +1 of the KL derivative (which no renormalisation cancels, see
  ALGORITHMS.md) is not part of the gradient.
- s_m are the soft predictions the agents uploaded this round, i.e. taken *before*
  distillation. The paper's eq. (7) evaluates them at the updated weights w*; that would
  need a second upload of the same size every round. The authors' code also uses the
  pre-distillation predictions.
- KL(t || s) = mean over public samples of sum over classes t * (log t - log s): a true
  KL (batchmean), not averaged over classes.
- w_n = D_n / D with D the sum of the k agents' private training set sizes.
- The regulariser pulls towards 1/k, the uniform weight over the round's agents; with
  full participation this is the paper's 1/N.

Partial participation (paper section 5.2): only the block of the sampled agents changes;
its columns are normalised, updated as above, and scaled back to their previous sums, so
the weights on agents not sampled stay exactly as they were and every column keeps its
sum.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict, Unpack

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]
Projection = Literal["simplex", "softmax", "none"]
PROJECTIONS: tuple[Projection, ...] = ("simplex", "softmax", "none")

EPS = 1e-8
"""Floor of a probability before its logarithm is taken."""


def as_distributions(soft: Array) -> Array:
    """Rows (last axis) floored at EPS and renormalised to sum to 1, in the input's dtype.

    Uploaded predictions can hold zeros or tiny negative values after float16/int8
    decoding; the KL needs strictly positive probabilities.
    """
    out = np.maximum(soft, EPS)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def normalise_columns(block: Array) -> npt.NDArray[np.float64]:
    """Each column divided by its sum; a column whose sum is not positive becomes uniform."""
    mass = block.sum(axis=0)
    k = block.shape[0]
    safe = np.where(mass > 0, mass, 1.0)
    return np.where(mass > 0, block / safe, 1.0 / k).astype(np.float64)


def mixture(weights: Array, soft: Array) -> Array:
    """Targets t[n] = sum_m weights[m, n] * soft[m] / sum_m weights[m, n].

    `soft` is (k, R, C) with rows on the simplex, `weights` (k, k) with positive column
    sums. Negative weights (reachable only with projection "none") can leave the simplex;
    the result is then floored and renormalised so that it is still a distribution.
    """
    k = soft.shape[0]
    flat = soft.reshape(k, -1)
    scaled = (weights / weights.sum(axis=0)).T.astype(flat.dtype)
    targets: Array = (scaled @ flat).reshape(soft.shape)
    if (weights < 0).any():
        return as_distributions(targets)
    return targets


def objective_and_gradient(
    a: Array, soft: Array, sizes: Array, *, lam: float, rho: float
) -> tuple[float, npt.NDArray[np.float64]]:
    """J(a) of the module docstring and its exact gradient dJ/da (k x k, float64).

    With mass_n = sum_m a[m, n] and L_n = log t_n - log s_n:
    dJ/da[m, n] = lambda * w_n / mass_n * (<s_m, L_n>/R - KL_n) + 2 * rho * (a[m, n] - 1/k).
    The heavy work runs in the dtype of `soft` (float32 in service, float64 in tests).
    Memory is a few (k, R*C) arrays; nothing is k x k x R x C.
    """
    k, r = soft.shape[0], soft.shape[1]
    flat = soft.reshape(k, -1)
    t = mixture(a, soft).reshape(k, -1)
    log_ratio = np.log(t / flat)
    kl = np.einsum("ij,ij->i", t, log_ratio).astype(np.float64) / r
    cross = (flat @ log_ratio.T).astype(np.float64) / r
    w = np.asarray(sizes, dtype=np.float64) / float(np.sum(sizes))
    mass = a.sum(axis=0)
    prior = 1.0 / k
    value = lam * float(w @ kl) + rho * float(np.sum((a - prior) ** 2))
    grad = lam * w / mass * (cross - kl) + 2.0 * rho * (a - prior)
    return value, grad


def project_simplex(v: Array) -> npt.NDArray[np.float64]:
    """Euclidean projection of each column of `v` onto the probability simplex.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008): x = max(v - theta, 0)
    with theta chosen per column so that x sums to 1. Adding a constant to a column does
    not change the result, unlike clamp-and-renormalise.
    """
    v = np.asarray(v, dtype=np.float64)
    k = v.shape[0]
    u = -np.sort(-v, axis=0)
    cumulative = np.cumsum(u, axis=0) - 1.0
    j = np.arange(1, k + 1, dtype=np.float64)[:, None]
    support = np.sum(u - cumulative / j > 0, axis=0)
    theta = cumulative[support - 1, np.arange(v.shape[1])] / support
    out: npt.NDArray[np.float64] = np.maximum(v - theta, 0.0)
    return out


def softmax_columns(a: Array, scale: float) -> npt.NDArray[np.float64]:
    """softmax(scale * column) for each column (the authors' code uses scale 5)."""
    z = scale * np.asarray(a, dtype=np.float64)
    z -= z.max(axis=0)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=0)
    return out


def update(
    a: Array,
    soft: Array,
    sizes: Array,
    *,
    lr: float,
    lam: float,
    rho: float,
    projection: Projection,
    softmax_scale: float = 5.0,
) -> tuple[npt.NDArray[np.float64], float]:
    """One gradient step a - lr * dJ/da (eq. 7) and the validity step; (new a, J before).

    projection "simplex": Euclidean projection of each column onto the simplex (default).
    "softmax": each column replaced by softmax(softmax_scale * column), as in the
    authors' code; it maps a near-uniform column to a near-uniform one whatever the
    step, so c barely moves (measured in ALGORITHMS.md). "none": the paper's
    unconstrained update; weights may leave [0, 1] and columns their sum of 1.
    """
    value, grad = objective_and_gradient(a, soft, sizes, lam=lam, rho=rho)
    stepped = np.asarray(a, dtype=np.float64) - lr * grad
    if projection == "simplex":
        return project_simplex(stepped), value
    if projection == "softmax":
        return softmax_columns(stepped, softmax_scale), value
    if projection == "none":
        return stepped, value
    raise ValueError(f"unknown projection {projection!r}; use one of {PROJECTIONS}")


class Step(TypedDict):
    """The keyword arguments of `update`, which `update_block` passes on."""

    lr: float
    lam: float
    rho: float
    projection: Projection
    softmax_scale: NotRequired[float]


def update_block(
    c: Array, idx: npt.NDArray[np.intp], soft: Array, sizes: Array, **step: Unpack[Step]
) -> tuple[npt.NDArray[np.float64], float]:
    """c with the block c[idx][:, idx] of this round's agents updated; (new c, J before).

    The block's columns are normalised (see `block_weights`), updated by `update` with
    `step`, and scaled back to their previous sums; every other entry of c is returned
    unchanged. `soft[i]` and `sizes[i]` belong to agent idx[i].
    """
    mass = _block(c, idx).sum(axis=0)
    new_a, value = update(block_weights(c, idx), soft, sizes, **step)
    out = np.array(c, dtype=np.float64)
    out[np.ix_(idx, idx)] = new_a * np.where(mass > 0, mass, 0.0)
    return out, value


def block_weights(c: Array, idx: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    """The normalised block of this round's agents: student n's weights over the teachers
    that answered, summing to 1 (on the full set this is c itself)."""
    return normalise_columns(_block(c, idx))


def _block(c: Array, idx: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    """c[idx][:, idx] as float64."""
    return np.asarray(c, dtype=np.float64)[np.ix_(idx, idx)]


def grow(c: Array, size: int) -> npt.NDArray[np.float64]:
    """c enlarged to size x size for newly registered agents.

    New agents get the initial weight 1/size in every column; the old weights are scaled
    by old/size so that each column keeps its sum (1 on the simplex).
    """
    old = c.shape[0]
    if size < old:
        raise ValueError(f"cannot shrink c from {old} to {size} agents")
    out = np.full((size, size), 1.0 / size)
    out[:old, :old] = np.asarray(c, dtype=np.float64) * (old / size)
    return out


def cosine_similarity(soft: Array) -> npt.NDArray[np.float64]:
    """k x k cosine similarity of the agents' flattened soft predictions."""
    flat = soft.reshape(soft.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1)
    unit = flat / np.where(norms > 0, norms, 1.0)[:, None]
    return np.clip((unit @ unit.T).astype(np.float64), -1.0, 1.0)


def sim_weights(soft: Array) -> npt.NDArray[np.float64]:
    """Sim-pFL: w[m, n] = cos(s_m, s_n) - min_m' cos(s_m', s_n), normalised per column.

    Self is included (it has the largest cosine); the least similar teacher gets 0. A
    column whose cosines are all equal (e.g. one agent) becomes uniform.
    """
    cos = cosine_similarity(soft)
    return normalise_columns(cos - cos.min(axis=0))


def topk_weights(soft: Array, k: int) -> npt.NDArray[np.float64]:
    """TopK-pFL: student n averages uniformly over itself and its k - 1 teachers with the
    largest cosine similarity (all agents when fewer than k answered)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = soft.shape[0]
    cos = cosine_similarity(soft)
    np.fill_diagonal(cos, np.inf)
    keep = min(k, n)
    top = np.argsort(-cos, axis=0, kind="stable")[:keep]
    w = np.zeros((n, n))
    w[top, np.arange(n)] = 1.0 / keep
    return w


def rank_average(x: Array) -> npt.NDArray[np.float64]:
    """Ranks 1..len(x) with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: Array, y: Array) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either is constant."""
    rx, ry = rank_average(x), rank_average(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = float(np.sqrt(np.sum(rx**2) * np.sum(ry**2)))
    return float(np.sum(rx * ry) / denom) if denom > 0 else float("nan")
