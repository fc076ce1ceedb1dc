"""Run independent tasks in parallel with Ray, or in-process when one worker is enough.

:func:`map_tasks` applies ``fn`` to every item and yields the results. With ``workers=1`` (and no cluster
address) it is a plain loop in this process: Ray is neither imported nor started, so tests and small runs pay
nothing. Otherwise every item becomes one Ray task:

- with no address, ``ray.init`` starts a local instance with ``num_cpus=workers``, no dashboard, quiet logs,
  bound to 127.0.0.1 and with usage statistics off (nothing leaves the machine); it is reused by later calls
  in the same process and stopped when the process exits (or by :func:`shutdown`);
- with ``address`` (or ``$RAY_ADDRESS``) it attaches to that cluster and changes nothing else there.

Read-only inputs shared by every task (model weights, evaluation tensors) go in ``shared``: they are put in
Ray's object store once, not pickled again for each task. Each task caps torch's threads so that all workers
together use about as many threads as there are cores (two workers with two threads each on two cores would
only contend).

Results are the same as the serial loop's as long as ``fn`` is deterministic for a given thread count: the
tests check this bit for bit on tensors.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["RayUnavailable", "default_threads", "map_tasks", "ray_address", "shutdown"]

_NO_SHARED = object()  # sentinel: fn takes only the item


class RayUnavailable(RuntimeError):
    """Parallel runs were asked for but the ``ray`` package is not installed."""


def ray_address(address: str | None = None) -> str | None:
    """The cluster to attach to: ``address``, else ``$RAY_ADDRESS``, else None (a local instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def default_threads(workers: int, address: str | None = None) -> int:
    """Torch threads per task: this machine's cores shared among the local workers, 1 on a cluster."""
    if ray_address(address):
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before import: no usage report leaves the machine
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "parallel runs (--workers > 1 or a Ray address) need the 'ray' package, which is not installed: "
            "run `pip install ray` (see requirements.txt), or use --workers 1"
        ) from None
    return ray


def _ensure_ray(workers: int, address: str | None):
    """Ray, initialised: attached to ``address`` or a local instance with ``workers`` CPUs."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    target = ray_address(address)
    quiet = dict(logging_level=logging.ERROR, log_to_driver=True)
    if target:
        ray.init(address=target, **quiet)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=_object_store_bytes(), **quiet)
    return ray


def _object_store_bytes() -> int:
    """A modest object store (Ray's default takes 30% of RAM): shared weights and tensors are tens of MB.
    ``$INTRAFUSION_RAY_STORE_MB`` raises it for larger models."""
    return int(float(os.environ.get("INTRAFUSION_RAY_STORE_MB", "512")) * 1024 * 1024)


def shutdown() -> None:
    """Stop the Ray instance this process started or attached to (no-op when none)."""
    if "ray" in sys.modules:
        ray = sys.modules["ray"]
        if ray.is_initialized():
            ray.shutdown()


def _cap_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:  # the compiled cost kernel follows torch's thread count; only set numba's when it is loaded
        numba = sys.modules.get("numba")
        if numba is not None:
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    except (ValueError, AttributeError):
        pass


_SHARED: dict = {}  # in a worker: the last shared object it read, by object id (read once per worker, not per task)


def _shared_value(box: list):
    """The shared object of ``box`` ([ObjectRef], wrapped so Ray does not resolve it for every task)."""
    import ray

    key = box[0].hex()
    if key not in _SHARED:
        _SHARED.clear()  # one sweep at a time: do not keep an earlier run's weights alive
        _SHARED[key] = ray.get(box[0])
    return _SHARED[key]


def _task(fn, shared_box: list | None, threads: int, index: int, item):
    """One Ray task: cap threads, then ``fn(item)`` or ``fn(item, shared)``."""
    _cap_threads(threads)
    return index, (fn(item) if shared_box is None else fn(item, _shared_value(shared_box)))


_REMOTE: list = []  # the Ray remote wrapper of _task, made once (ray.remote needs ray imported)


def map_tasks(fn: Callable, items: Iterable, *, workers: int = 1, address: str | None = None,
              shared: Any = _NO_SHARED, ordered: bool = True, threads: int | None = None,
              progress: bool | str | Callable[[int, int], None] | None = None,
              gpus_per_task: float = 0.0) -> Iterator:
    """Apply ``fn`` to every item, in parallel with Ray when ``workers > 1`` or a cluster address is given.

    Parameters
    ----------
    fn : callable
        ``fn(item)``, or ``fn(item, shared)`` when ``shared`` is given. Must be importable or picklable
        (a module-level function) when run on Ray.
    items : iterable
        One task per item (items are sent to the tasks, so keep them small: indices, settings).
    workers : int
        1: an in-process loop (Ray is not started). More: tasks run on a Ray instance, local with this many
        CPUs unless ``address`` names a cluster.
    address : str, optional
        A Ray cluster to attach to (default ``$RAY_ADDRESS``); attaching changes nothing on the cluster.
    shared : object, optional
        Read-only data every task needs (weights, tensors): put in the object store once.
    ordered : bool
        True: yield results in input order. False: yield ``(index, result)`` as tasks complete.
    threads : int, optional
        Torch threads per task (default :func:`default_threads`). The in-process loop keeps the caller's.
    progress : bool, str or callable, optional
        True or a label: a tqdm bar on stderr; a callable ``progress(done, total)`` is called after each task.
    gpus_per_task : float
        GPUs each Ray task reserves (e.g. 0.5: two tasks share one); Ray hides the GPUs from tasks without.

    Yields
    ------
    object or (int, object)
        ``fn``'s results (see ``ordered``). A task's exception is raised here as its original type.
    """
    items = list(items)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    report, close = _progress(progress, len(items))
    try:
        if workers == 1 and not ray_address(address):
            for i, item in enumerate(items):
                out = fn(item) if shared is _NO_SHARED else fn(item, shared)
                report(i + 1)
                yield out if ordered else (i, out)
            return
        yield from _map_ray(fn, items, workers, address, shared, ordered, threads, report, gpus_per_task)
    finally:
        close()


def _map_ray(fn, items, workers, address, shared, ordered, threads, report, gpus_per_task=0.0):
    ray = _ensure_ray(workers, address)
    if not _REMOTE:
        _REMOTE.append(ray.remote(num_cpus=1, max_retries=0)(_task))
    threads = threads or default_threads(workers, address)
    fn_ref = ray.put(fn)
    # A list around the reference: Ray resolves only top-level references, so each worker reads (deserialises)
    # the shared object once and keeps it, instead of once per task.
    box = None if shared is _NO_SHARED else [ray.put(shared)]
    remote = _REMOTE[0].options(num_gpus=gpus_per_task) if gpus_per_task else _REMOTE[0]
    pending = [remote.remote(fn_ref, box, threads, i, item) for i, item in enumerate(items)]
    done: dict[int, Any] = {}
    next_out, count = 0, 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                index, out = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None
            count += 1
            report(count)
            if not ordered:
                yield index, out
                continue
            done[index] = out
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    finally:
        for ref in pending:  # the caller stopped early or a task failed: do not leave work running
            ray.cancel(ref, force=False)


def _progress(progress, total: int):
    """(report(done), close()) for the ``progress`` argument of :func:`map_tasks`."""
    if not progress:
        return (lambda done: None), (lambda: None)
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, desc=progress if isinstance(progress, str) else "tasks", file=sys.stderr)
    return (lambda done: bar.update(done - bar.n)), bar.close
