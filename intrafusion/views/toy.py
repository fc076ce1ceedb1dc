"""The toy one-hidden-layer network of the Learn page: twins, pruning, fusion and their errors.

No Streamlit here: the pages in ``pages/`` draw what these functions return.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.transport import cost_matrix, marginal, solve, transport_map
from ..experiments.sweep import method_label
from .importance import select_kept


@dataclass
class ToyNet:
    """A one-hidden-layer ReLU network on 2-D inputs: f(x) = sum_i v_i relu(w_i . x + b_i).

    Each hidden neuron is a point ``w_i`` in the plane (its incoming weights); ``v_i`` is its outgoing weight.

    Attributes
    ----------
    w : numpy.ndarray (n, 2)
    b : numpy.ndarray (n,)
    v : numpy.ndarray (n,)
    names : list of str
        A name per neuron (twins share a letter: ``A``, ``A'``).
    """

    w: np.ndarray
    b: np.ndarray
    v: np.ndarray
    names: list[str]

    @property
    def n(self) -> int:
        return len(self.b)

    def hidden(self, xs: np.ndarray) -> np.ndarray:
        """Hidden activations, (N, n)."""
        return np.maximum(np.asarray(xs, dtype=np.float64) @ self.w.T + self.b, 0.0)

    def contributions(self, xs: np.ndarray) -> np.ndarray:
        """Each neuron's contribution v_i relu(w_i . x + b_i) to the output, (N, n)."""
        return self.hidden(xs) * self.v

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        return self.contributions(xs).sum(axis=1)

    def features(self) -> np.ndarray:
        """Feature vectors as Intra-Fusion builds them: incoming row and outgoing column, L2-normalised."""
        x = np.concatenate([self.w, self.v[:, None]], axis=1)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def importance(self) -> np.ndarray:
        """l1 importance: mean over the two layers of sum |w|, divided by its mean (as the library does)."""
        score = (np.abs(self.w).sum(axis=1) + np.abs(self.v)) / 2.0
        return score / score.mean()


def toy_network(n_unique: int = 3, copies: int = 2, jitter: float = 0.0, seed: int = 0) -> ToyNet:
    """A toy network whose neurons come in groups of ``copies`` near-identical twins.

    Parameters
    ----------
    n_unique : int
        Distinct neurons (letters A, B, ...).
    copies : int
        How many times each appears (2: every neuron has a twin; 1: no duplicates).
    jitter : float
        Standard deviation of the noise added to the twins' weights (0: exact duplicates).
    seed : int

    Returns
    -------
    ToyNet
        Neurons ordered A, A', B, B', ... (twins adjacent).
    """
    if n_unique < 1 or copies < 1:
        raise ValueError("need at least one neuron and one copy")
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 2 * np.pi, n_unique)
    radii = rng.uniform(0.6, 1.6, n_unique)
    w0 = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    b0 = rng.uniform(-0.5, 0.5, n_unique)
    v0 = rng.choice([-1.0, 1.0], n_unique) * rng.uniform(0.5, 1.5, n_unique)
    w, b, v, names = [], [], [], []
    for i in range(n_unique):
        letter = chr(ord("A") + i) if i < 26 else f"N{i}"
        for k in range(copies):
            noise = jitter if k > 0 else 0.0
            w.append(w0[i] + noise * rng.standard_normal(2))
            b.append(b0[i] + noise * rng.standard_normal())
            v.append(v0[i] + noise * rng.standard_normal())
            names.append(letter + "'" * k)
    return ToyNet(np.array(w), np.array(b), np.array(v), names)


@dataclass
class ToyResult:
    """A pruned toy network and how it was obtained.

    Attributes
    ----------
    net : ToyNet
        The pruned network (m neurons, named after the kept ones).
    method : str
        'default', 'fusion (paper)' or 'fusion (function-preserving)'.
    kept, pruned : numpy.ndarray
    plan, cost : numpy.ndarray (n, m) or None
    map_out, map_in : numpy.ndarray (m, n) or None
    """

    net: ToyNet
    method: str
    kept: np.ndarray
    pruned: np.ndarray
    plan: np.ndarray | None = None
    cost: np.ndarray | None = None
    map_out: np.ndarray | None = None
    map_in: np.ndarray | None = None


def toy_prune(net: ToyNet, sparsity: float = 0.5, method: str = "fusion", normalization: str = "paper",
              keep: Sequence[int] | None = None, p: float = 1.0) -> ToyResult:
    """Prune the toy network's hidden layer with default pruning or Intra-Fusion (the library's OT steps).

    Parameters
    ----------
    net : ToyNet
    sparsity : float
        Fraction of hidden neurons removed (m = int(n (1 - s)) kept).
    method : {'default', 'fusion'}
    normalization : {'paper', 'function-preserving'}
        ``paper`` sums the fused neurons' incoming and outgoing weights; ``function-preserving`` averages
        the incoming side and sums the outgoing side.
    keep : sequence of int, optional
        Neurons to keep (default: the m most important by l1). Twins have equal importance, so a teaching
        example keeps one of each pair explicitly.
    p : float
        Cost exponent.

    Returns
    -------
    ToyResult
    """
    if keep is None:
        kept, pruned = select_kept(net.importance(), sparsity)
    else:
        kept = np.sort(np.unique(np.asarray(keep, dtype=int)))
        if len(kept) == 0 or kept.min() < 0 or kept.max() >= net.n:
            raise ValueError(f"keep must name neurons 0..{net.n - 1}")
        pruned = np.setdiff1d(np.arange(net.n), kept)
    names = [net.names[i] for i in kept]
    if method == "default":
        return ToyResult(ToyNet(net.w[kept], net.b[kept], net.v[kept], names), "default", kept, pruned)
    if method != "fusion":
        raise ValueError(f"unknown method {method!r}: choose 'default' or 'fusion'")
    x = torch.from_numpy(net.features())
    cost = cost_matrix(x, x[torch.as_tensor(kept)], p).double().numpy()
    mu, nu = marginal("uniform", net.n), marginal("uniform", len(kept))
    plan = solve(mu, nu, cost, "emd")
    map_out, map_in = transport_map(plan, mu, normalization)
    fused = ToyNet(map_out @ net.w, map_out @ net.b, map_in @ net.v, names)
    return ToyResult(fused, method_label("fusion", normalization), kept, pruned, plan, cost, map_out, map_in)


def toy_grid(extent: float = 2.0, steps: int = 41) -> np.ndarray:
    """Inputs on a square grid [-extent, extent]^2, shape (steps^2, 2)."""
    t = np.linspace(-extent, extent, steps)
    xx, yy = np.meshgrid(t, t)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def toy_errors(original: ToyNet, results: Iterable[ToyResult], xs: np.ndarray | None = None) -> dict[str, float]:
    """Root-mean-square difference between each pruned network's output and the original's on ``xs``."""
    xs = toy_grid() if xs is None else xs
    ref = original(xs)
    return {r.method: float(np.sqrt(np.mean((r.net(xs) - ref) ** 2))) for r in results}


def toy_preactivations(net: ToyNet, xs: np.ndarray | None = None) -> np.ndarray:
    """Pre-activations w_i . x + b_i of every hidden neuron on ``xs`` (default: the grid), shape (N, n)."""
    xs = toy_grid() if xs is None else np.asarray(xs, dtype=np.float64)
    return xs @ net.w.T + net.b


def toy_std_ratios(original: ToyNet, result: ToyResult, xs: np.ndarray | None = None) -> np.ndarray:
    """Std of each pruned network neuron's pre-activation over the std of the same (kept) neuron before pruning.

    Above 1: the neuron overshoots (the paper's map sums its sources' incoming weights); below 1: it collapses
    (averaging sources that point different ways shrinks the weight vector). Default pruning gives exactly 1.

    Returns
    -------
    numpy.ndarray (m,)
    """
    before = toy_preactivations(original, xs)[:, result.kept].std(axis=0)
    after = toy_preactivations(result.net, xs).std(axis=0)
    return after / np.maximum(before, 1e-12)


def toy_moment_match(original: ToyNet, result: ToyResult, xs: np.ndarray | None = None) -> ToyResult:
    """Repair by moment matching: give every kept neuron its pre-pruning pre-activation mean and std again.

    With z_t = w_t . x + b_t after pruning (mean_t, std_t) and the same neuron's moments before it (mean_k,
    std_k), the affine correction z_t <- mean_k + a (z_t - mean_t), a = std_k / std_t, is
    w_t <- a w_t and b_t <- mean_k + a (b_t - mean_t). In a CNN the targets are the BatchNorm statistics the
    model stores (no data needed); here they are measured on the input grid. Outgoing weights are untouched.
    """
    z_before = toy_preactivations(original, xs)[:, result.kept]
    z_after = toy_preactivations(result.net, xs)
    a = z_before.std(axis=0) / np.maximum(z_after.std(axis=0), 1e-12)
    w = result.net.w * a[:, None]
    b = z_before.mean(axis=0) - a * z_after.mean(axis=0) + a * result.net.b
    net = ToyNet(w, b, result.net.v.copy(), list(result.net.names))
    return ToyResult(net, result.method + " + moments", result.kept, result.pruned, result.plan, result.cost,
                     result.map_out, result.map_in)
