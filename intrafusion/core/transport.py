"""Transport: from a group's weights to the map that fuses n channels into m (paper, Algorithm 2).

Notation (n sources = all channels of the group, m targets):

- feature vector of channel c: concatenation of every producer's out-row ``W[c]`` and every consumer's
  in-column ``V[:, c]`` (no biases, no BN), L2-normalised;
- cost  ``C[s, t] = || x_s - y_t ||_p`` (p = 1 by default), shape (n, m);
- marginals ``mu`` (n,) and ``nu`` (m,), uniform by default;
- plan ``P = argmin_{P 1 = mu, P^T 1 = nu, P >= 0} <P, C>`` (exact EMD; entropic Sinkhorn as an option);
- map ``T = P^T diag(1/mu)``, shape (m, n): every SOURCE column sums to 1, every target row to n*nu_t.

The map is applied along the channel axis of every layer of the group. ``paper`` uses T on both sides (each
fused channel is a SUM of coefficients totalling n/m); ``function-preserving`` averages on the producer side
(rows of T rescaled to sum to 1) and sums on the consumer side, which reproduces a network made of exact
duplicate neurons (see the reference, section 3.1).
"""

from __future__ import annotations

import numpy as np
import torch

from .groups import LayerSlice

__all__ = [
    "NORMALIZATIONS",
    "SOLVERS",
    "TARGETS",
    "MARGINALS",
    "TARGET_MARGINALS",
    "apply_map",
    "centroids",
    "cost_matrix",
    "feature_vectors",
    "marginal",
    "solve",
    "transport_map",
]

NORMALIZATIONS = ("paper", "function-preserving")
SOLVERS = ("emd", "sinkhorn")
TARGETS = ("kept", "centroids")
MARGINALS = ("uniform", "importance")
#: Target marginals: also ``nearest``, each target's share of the channels that are closest to it.
TARGET_MARGINALS = MARGINALS + ("nearest",)


def feature_vectors(slices: list[LayerSlice]) -> torch.Tensor:
    """Feature vector of every channel of a group, L2-normalised. Shape (n, d)."""
    parts = []
    for s in slices:
        w = s.module.weight.detach()
        if s.side == "out":  # a view when the group owns every row in order: copied once, by the cat below
            parts.append(_gather(w, s.index).reshape(s.index.shape[0], -1))
        elif s.side == "in":
            parts.append(w.transpose(0, 1)[s.index].reshape(s.index.shape[0], -1))
    if not parts:
        raise ValueError("the group has no conv/linear weights to compare")
    x = torch.cat(parts, dim=1).to(torch.float32)
    return x.div_(x.norm(dim=1, keepdim=True).clamp_min(1e-12))  # in place: x is a fresh copy


def cost_matrix(x: torch.Tensor, y: torch.Tensor, p: float = 1.0, *, kept: torch.Tensor | None = None,
                device: str | torch.device | None = None) -> torch.Tensor:
    """Pairwise ``||x_s - y_t||_p``, shape (len(x), len(y)), returned on ``x``'s device.

    Parameters
    ----------
    x, y : torch.Tensor
        (n, d) sources and (m, d) targets.
    p : float
        For p = 2 the matrix-product form ``|x|^2 + |y|^2 - 2 x.y`` is used (one GEMM); other p need all
        n x m x d absolute differences.
    kept : torch.Tensor, optional
        Indices such that ``y == x[kept]`` (targets = kept channels). The kept rows of C then form a
        symmetric m x m block, of which only one triangle is computed.
    device : str or torch.device, optional
        Where to compute it (``auto``, ``cpu``, ``cuda``); default :func:`intrafusion.device.compute_device`.
    """
    if p <= 0:
        raise ValueError(f"the cost exponent p must be positive, got {p}")
    from ..device import compute_device, resolve_device

    where = resolve_device(device) if device is not None else compute_device()
    if where is not None and where.type != x.device.type:
        moved = kept.to(where) if isinstance(kept, torch.Tensor) else kept
        return cost_matrix(x.to(where), y.to(where), p, kept=moved, device=where).to(x.device)
    if p == 2:
        return torch.cdist(x, y, p=2.0, compute_mode="use_mm_for_euclid_dist").clamp_min(0)
    if kept is None:
        out = _accumulate(x, y, p)
    else:
        kept = torch.as_tensor(kept, dtype=torch.long)
        kept = kept.to(x.device)
        rest = torch.ones(len(x), dtype=torch.bool, device=x.device)
        rest[kept] = False
        out = torch.empty(len(x), len(kept), dtype=torch.float64, device=x.device)
        out[rest] = _accumulate(x[rest], y, p)
        out[kept] = _accumulate(y, y, p, symmetric=True)
    return (out if p == 1 else out.pow(1.0 / p)).to(x.dtype)


_BLOCK = 128  # features per block: a 128 x m slab of y stays in cache while every x row passes over it
_ROWS = 64  # rows per strip of the symmetric block


def _accumulate(x: torch.Tensor, y: torch.Tensor, p: float, symmetric: bool = False) -> torch.Tensor:
    """sum over feature blocks b of ||x_b - y_b||_p^p (float64). The plain cdist streams all of y from memory
    once per x row and is memory bound (about 2x slower here). ``symmetric`` (x is y): upper triangle only."""
    if p == 1 and x.device.type == "cpu" and x.dtype == torch.float32 and _l1_kernel() is not None:
        return _accumulate_l1_compiled(x, y, symmetric)
    out = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64, device=x.device)
    for j in range(0, x.shape[1], _BLOCK):
        xb, yb = x[:, j : j + _BLOCK], y[:, j : j + _BLOCK]
        if not symmetric:
            d = torch.cdist(xb, yb, p=float(p))
            out += d if p == 1 else d.double().pow(p)
            continue
        for i in range(0, len(yb), _ROWS):
            d = torch.cdist(yb[i : i + _ROWS], yb[i:], p=float(p))
            out[i : i + _ROWS, i:] += d if p == 1 else d.double().pow(p)
    if symmetric:
        upper = torch.triu(out)
        out = upper + upper.T - torch.diag(torch.diagonal(upper))
    return out


_prange = range
_KERNEL: list = []  # [compiled kernel or None], filled on first use: numba's import and JIT cost only when needed
_CHUNK = 512  # features summed in float32 before each float64 add: keeps the error near float64's (~1e-6 here)
_JBLOCK = 128  # targets per cache block: 128 targets x 512 features x 4 bytes = 256 KB of y stay in L2


def _l1_kernel():
    """The compiled p = 1 kernel (numba, parallel, fastmath), or None when numba is not installed
    (or ``INTRAFUSION_NO_NUMBA=1``): the blocked ``torch.cdist`` path is then the fallback."""
    if not _KERNEL:
        import os

        try:
            if os.environ.get("INTRAFUSION_NO_NUMBA") == "1":
                raise ImportError("disabled by INTRAFUSION_NO_NUMBA")
            import numba
        except ImportError:
            _KERNEL.append(None)
        else:
            global _prange
            _prange = numba.prange  # numba reads globals when it compiles: the loop below becomes parallel
            _KERNEL.append(numba.njit(parallel=True, fastmath=True, cache=True)(_l1_tiles))
    return _KERNEL[0]


def _accumulate_l1_compiled(x: torch.Tensor, y: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """``sum_k |x_sk - y_tk|`` (float64) with the compiled kernel; ``symmetric``: x is y, upper triangle only.

    The kernel is called once per block of ``_JBLOCK`` targets, so a large cost shows a progress bar."""
    import numba

    xs = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
    ys = xs if symmetric else np.ascontiguousarray(y.detach().numpy(), dtype=np.float32)
    n, m = xs.shape[0], ys.shape[0]
    out = np.zeros((n, m), dtype=np.float64)
    torch_threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    kernel = _l1_kernel()
    work = (n * m / (2 if symmetric else 1)) * xs.shape[1]
    bar = _bar(m, f"cost {n} x {m}" + (" (kept block)" if symmetric else ""), work, _PROGRESS_COST)
    for j0 in range(0, m, _JBLOCK):
        j1 = min(j0 + _JBLOCK, m)
        kernel(xs, ys, out, symmetric, _CHUNK, j0, j1)
        if bar is not None:
            bar.update(j1 - j0)
    if bar is not None:
        bar.close()
    torch.set_num_threads(torch_threads)  # numba's OpenMP region resets torch's thread count (1 -> all cores)
    res = torch.from_numpy(out)
    if symmetric:
        upper = torch.triu(res)
        res = upper + upper.T - torch.diag(torch.diagonal(upper))
    return res


_PROGRESS_COST = 2e10  # absolute differences above which the cost shows a progress bar (a few seconds on 2 cores)
_PROGRESS_SOLVE = 2e6  # plan entries above which the exact OT solve says it is running (seconds at 4096 x 2048)


def _bar(total: int, desc: str, work: float, threshold: float):
    """A tqdm bar on stderr for a step of ``work`` units when it exceeds ``threshold`` (None otherwise); tqdm's
    ``disable=None`` hides it when stderr is not a terminal (logs, tests)."""
    if work < threshold:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, disable=None)


def _l1_tiles(x, y, out, symmetric, chunk, j0, j1):  # pragma: no cover - compiled by numba
    """Kernel: ``out[i, j] += sum_k |x_ik - y_jk|`` for targets ``j0 <= j < j1`` (out starts at zero).

    Blocked like a matrix product, because for wide groups the plain loop is memory bound: a block of
    ``j1 - j0`` targets x ``chunk`` features of y (~256 KB) stays in the core's L2 cache while every source
    row passes over it (a 4096-channel group has 240 MB of targets: streaming them again for every four
    sources was most of its time). Inside, four source rows at a time against each target row (register
    tiling: each target value is loaded once per four sources). Each chunk is summed in float32 and added
    to the float64 ``out`` in chunk order, so the value does not depend on the blocking or the threads.
    """
    n, d = x.shape
    tiles = (n + 3) // 4
    for c in range(0, d, chunk):
        e = min(c + chunk, d)
        for q in _prange(tiles):
            # Tiles in the order 0, last, 1, last - 1, ...: threads get contiguous ranges of q, and in the
            # symmetric case early tiles hold far more of the triangle, so this order balances the threads.
            t = q // 2 if q % 2 == 0 else tiles - 1 - q // 2
            i0 = t * 4
            i1 = min(i0 + 4, n)
            for j in range(max(j0, i0) if symmetric else j0, j1):
                yy = y[j, c:e]
                if i1 - i0 == 4:
                    xa, xb, xc, xd = x[i0, c:e], x[i0 + 1, c:e], x[i0 + 2, c:e], x[i0 + 3, c:e]
                    a0 = a1 = a2 = a3 = np.float32(0)
                    for k in range(e - c):
                        v = yy[k]
                        a0 += abs(xa[k] - v)
                        a1 += abs(xb[k] - v)
                        a2 += abs(xc[k] - v)
                        a3 += abs(xd[k] - v)
                    out[i0, j] += a0
                    out[i0 + 1, j] += a1
                    out[i0 + 2, j] += a2
                    out[i0 + 3, j] += a3
                else:
                    for i in range(i0, i1):
                        xi = x[i, c:e]
                        a = np.float32(0)
                        for k in range(e - c):
                            a += abs(xi[k] - yy[k])
                        out[i, j] += a


def centroids(x: torch.Tensor, m: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """k-means (k-means++ start, seeded) of the feature vectors into m clusters: (centroids (m, d), labels (n,))."""
    from scipy.cluster.vq import kmeans2

    data = x.detach().cpu().double().numpy()
    cents, labels = kmeans2(data, m, minit="++", seed=np.random.default_rng(seed), iter=20)
    return torch.from_numpy(cents).to(x.dtype), labels


def marginal(kind: str, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Uniform (1/size) or proportional to ``weights`` (e.g. importance), as float64 summing to 1."""
    if kind == "uniform" or weights is None:
        if kind not in MARGINALS:
            raise ValueError(f"unknown marginal {kind!r}: choose one of {', '.join(MARGINALS)}")
        return np.full(size, 1.0 / size)
    if kind != "importance":
        raise ValueError(f"unknown marginal {kind!r}: choose one of {', '.join(MARGINALS)}")
    w = np.clip(np.asarray(weights, dtype=np.float64), 0, None) + 1e-12
    return w / w.sum()


def nearest_marginal(cost: np.ndarray) -> np.ndarray:
    """nu_t = (number of sources whose cheapest target is t) / n: the Voronoi share of every target.

    With a uniform source marginal the optimal plan is then the nearest-target assignment itself (it is feasible
    and gives every source its smallest cost), so the map merges each channel into the target closest to it,
    with clusters as large as the channels' geometry makes them, instead of the n/m channels per target that a
    uniform target marginal forces. A target that no source is nearest to (possible with centroid targets) keeps
    a tiny mass (1e-9 channels), so every target row of the map stays defined."""
    counts = np.bincount(np.asarray(cost).argmin(axis=1), minlength=cost.shape[1]).astype(np.float64)
    counts[counts == 0] = 1e-9
    return counts / counts.sum()


def solve(mu: np.ndarray, nu: np.ndarray, cost: np.ndarray, solver: str = "emd", reg: float = 0.05) -> np.ndarray:
    """Optimal transport plan between ``mu`` and ``nu`` under ``cost``, shape (n, m).

    ``emd``: exact network simplex (POT ``ot.emd``); marginals hold to machine precision.
    ``sinkhorn``: entropic OT, ``reg`` relative to the largest cost (the cost is divided by its maximum),
    log-domain iterations so small ``reg`` stays stable; marginals hold approximately.
    """
    import ot  # POT takes ~1.5 s to import: only pay for it when a plan is solved (app cold start)

    cost = np.ascontiguousarray(cost, dtype=np.float64)
    if not np.all(np.isfinite(cost)):
        raise ValueError(f"the transport cost has {int((~np.isfinite(cost)).sum())} NaN/inf entries of "
                         f"{cost.size}: the model's weights are not finite (a corrupt checkpoint?)")
    if solver == "emd":
        bar = _bar(1, f"exact OT plan {cost.shape[0]} x {cost.shape[1]}", cost.size, _PROGRESS_SOLVE)
        plan = ot.emd(mu, nu, cost, numItermax=1_000_000)
        if bar is not None:
            bar.update(1)
            bar.close()
        _check_marginals(plan, mu, nu, solver, tol=1e-6)
        return plan
    if solver == "sinkhorn":
        if reg <= 0:
            raise ValueError(f"the Sinkhorn regularisation must be positive, got {reg}")
        scale = cost.max() if cost.max() > 0 else 1.0
        plan = ot.sinkhorn(mu, nu, cost / scale, reg, method="sinkhorn_log", numItermax=2000, stopThr=1e-9)
        _check_marginals(plan, mu, nu, solver, tol=1e-2)  # entropic OT: marginals hold approximately
        return plan
    raise ValueError(f"unknown OT solver {solver!r}: choose one of {', '.join(SOLVERS)}")


def _check_marginals(plan: np.ndarray, mu: np.ndarray, nu: np.ndarray, solver: str, tol: float) -> None:
    """Raise unless P 1 = mu and P^T 1 = nu (to ``tol`` times the total mass).

    POT only warns when it fails (e.g. an all-zero plan for NaN costs or unequal masses); fusing with such a
    plan would silently zero the kept channels.
    """
    plan = np.asarray(plan, dtype=np.float64)
    mass = max(float(np.sum(mu)), 1e-300)
    err_rows = float(np.abs(plan.sum(axis=1) - mu).max()) if plan.size else 0.0
    err_cols = float(np.abs(plan.sum(axis=0) - nu).max()) if plan.size else 0.0
    if np.all(np.isfinite(plan)) and max(err_rows, err_cols) <= tol * mass:
        return
    marginals_ok = (np.all(np.isfinite(mu)) and np.all(np.isfinite(nu)) and (mu >= 0).all() and (nu >= 0).all()
                    and abs(float(np.sum(nu)) - mass) <= 1e-6 * mass)
    if not marginals_ok:
        why = "the marginals mu and nu must be finite, non-negative and of equal mass"
    else:
        why = "the solver did not converge (for sinkhorn raise reg; for emd check the cost)"
    raise ValueError(
        f"the {solver} transport plan does not hold its marginals (row sums off by {err_rows:.3g}, column sums "
        f"by {err_cols:.3g}, total mass {mass:.3g}): {why}, so fusing with it would corrupt the model."
    )


def transport_map(plan: np.ndarray, mu: np.ndarray, normalization: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """The maps applied to the producer side (out-channels) and consumer side (in-channels), each (m, n).

    ``paper``: T = P^T diag(1/mu) on both sides. ``function-preserving``: producers get T with its rows
    rescaled to sum to 1 (an average of the fused channels), consumers get T (a sum).
    """
    t = plan.T / mu[None, :]
    if normalization == "paper":
        return t, t
    if normalization == "function-preserving":
        rows = t.sum(axis=1, keepdims=True)
        return t / np.where(rows > 0, rows, 1.0), t
    raise ValueError(f"unknown map normalisation {normalization!r}: choose one of {', '.join(NORMALIZATIONS)}")


@torch.no_grad()
def apply_map(slices: list[LayerSlice], map_out: np.ndarray, map_in: np.ndarray, slots: np.ndarray) -> None:
    """Write the fused channels into channel positions ``slots`` of every layer of the group, in place.

    Target t goes to slot ``slots[t]``; the other channels are then removed by ordinary index selection.
    Producer weights and biases (and the BatchNorm shift left by folding) get ``map_out``; consumer
    weights get ``map_in``. BatchNorm scale and statistics are constant after folding: index selection
    alone is right for them.
    """
    slots_t = torch.as_tensor(np.asarray(slots), dtype=torch.long)
    dtype = slices[0].module.weight.dtype if slices else torch.float32
    where = slices[0].module.weight.device if slices else torch.device("cpu")  # update where the weights are
    maps = {"out": _as_operator(map_out, dtype, where), "in": _as_operator(map_in, dtype, where)}
    for s in slices:
        tmap = maps["in" if s.side == "in" else "out"]
        dest = s.index[slots_t]
        if s.side == "out":
            tensors = [s.module.weight] + ([s.module.bias] if s.module.bias is not None else [])
            for p in tensors:
                p.data[dest] = _apply(tmap, _gather(p.data, s.index))
        elif s.side == "in":
            wt = s.module.weight.data.transpose(0, 1)
            wt[dest] = _apply(tmap, _gather(wt, s.index))
        elif s.side == "norm" and getattr(s.module, "bias", None) is not None:
            b = s.module.bias.data
            b[dest] = _apply(tmap, b[s.index])


def _as_operator(tmap: np.ndarray, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """The map as a tensor; sparse when it is (an exact OT plan has at most n + m - 1 non-zeros), which makes
    the weight update O(nnz x features) instead of O(m x n x features)."""
    t = torch.as_tensor(tmap, dtype=dtype)
    t = t.to_sparse() if (t != 0).sum() < 0.1 * t.numel() else t
    return t if device is None else t.to(device)


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` (n, k, ...); a view when ``index`` is every row in order (most producers): a 4096-channel
    layer is then not copied whole before the update."""
    if index.shape[1] == 1 and index.shape[0] == t.shape[0] and torch.equal(index[:, 0], torch.arange(t.shape[0])):
        return t.unsqueeze(1)
    return t[index]


def _apply(tmap: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``tmap @ values`` along the first axis of ``values`` (n, ...) -> (m, ...)."""
    flat = values.reshape(values.shape[0], -1)
    out = torch.sparse.mm(tmap, flat) if tmap.is_sparse else tmap @ flat
    return out.reshape((tmap.shape[0], *values.shape[1:]))
