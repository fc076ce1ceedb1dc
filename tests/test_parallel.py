"""The Ray engine: in-process with one worker, the same results bit for bit with two, errors named."""

import sys

import numpy as np
import pytest
import torch

from intrafusion import parallel
from intrafusion.parallel import default_threads, map_tasks


def _work(seed, shared):
    """A small deterministic tensor computation that uses the shared tensor."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 64, generator=g)
    h = torch.tanh(shared["x"] @ w)
    return {"seed": seed, "out": h.sum(0), "norm": float(h.norm())}


def _fail(item):
    if item == 2:
        raise ValueError(f"bad item {item}")
    return item


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (starting one takes seconds), stopped afterwards."""
    ray = pytest.importorskip("ray")
    # Tasks get this module's functions by value: the workers cannot import the tests folder.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    parallel.shutdown()


def test_one_worker_runs_in_process_without_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(parallel, "_import_ray", lambda: pytest.fail("workers=1 must not import Ray"))
    seen = []
    out = list(map_tasks(lambda i: i * i, range(5), progress=lambda done, total: seen.append((done, total))))
    assert out == [0, 1, 4, 9, 16]
    assert seen == [(i, 5) for i in range(1, 6)]
    assert list(map_tasks(lambda i, s: i + s, [1, 2], shared=10, ordered=False)) == [(0, 11), (1, 12)]


def test_bad_worker_count_named():
    with pytest.raises(ValueError, match="workers must be at least 1"):
        list(map_tasks(abs, [1], workers=0))


def test_missing_ray_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(parallel.RayUnavailable, match="pip install ray"):
        list(map_tasks(abs, [1, 2], workers=2))


def test_threads_share_the_cores():
    assert default_threads(1) >= 1
    assert default_threads(64) == 1
    assert default_threads(2, address="ray://example:10001") == 1


def test_two_workers_equal_serial_bit_for_bit(ray_instance):
    shared = {"x": torch.randn(32, 64, generator=torch.Generator().manual_seed(7))}
    seeds = list(range(6))
    serial = list(map_tasks(_work, seeds, shared=shared))
    par = list(map_tasks(_work, seeds, workers=2, shared=shared))
    assert [r["seed"] for r in par] == seeds  # input order
    for a, b in zip(serial, par):
        assert torch.equal(a["out"], b["out"]) and a["norm"] == b["norm"]
    unordered = dict(map_tasks(_work, seeds, workers=2, shared=shared, ordered=False))
    assert sorted(unordered) == seeds and all(torch.equal(unordered[i]["out"], serial[i]["out"]) for i in seeds)


def test_task_error_keeps_its_type(ray_instance):
    with pytest.raises(ValueError, match="bad item 2"):
        list(map_tasks(_fail, range(4), workers=2))


def test_sweep_with_two_workers_equals_serial(ray_instance):
    from intrafusion.data import load_dataset, subset
    from intrafusion.experiments.sweep import sweep
    from intrafusion.models.zoo import resolve_model

    loaded = resolve_model("vgg11_bn-mnist5k")
    test = subset(load_dataset(loaded.dataset, "test", preprocessing=loaded.preprocessing), 100, seed=0)
    x, y = (torch.stack(t) for t in zip(*[test[i] for i in range(len(test))]))
    args = (loaded.model, loaded.example_inputs, x, y, [0, 5], [0.3, 0.6])
    kwargs = dict(normalizations=("paper", "function-preserving"), keep_distances=True)
    serial = list(sweep(*args, **kwargs))
    par = list(sweep(*args, workers=2, **kwargs))
    whole = [list(sweep(loaded.model, loaded.example_inputs, x, y, "all", [0.4], workers=w)) for w in (1, 2)]
    for a, b in zip(serial + whole[0], par + whole[1], strict=True):
        da, db = a.to_dict(), b.to_dict()
        for timing in ("seconds", "eval_seconds"):
            da.pop(timing), db.pop(timing)
        assert da == db
        assert a.distances is None or np.array_equal(a.distances, b.distances)


def test_reproduce_with_two_workers_equals_serial(ray_instance, tmp_path):
    import csv

    from intrafusion.experiments.reproduce import run_reproduction
    from intrafusion.experiments.reproduce.workers import chains

    assert ["datafree", "output_preservation"] in chains()  # preservation reads the data-free distances
    for workers in (1, 2):
        run_reproduction(models=["mlp-digits8x8"], out_dir=tmp_path / str(workers), quick=True, progress=False,
                         workers=workers)
    compared = 0
    for path in sorted((tmp_path / "1").glob("*.csv")):
        if path.name in ("speed.csv", "sweep_timing.csv"):  # timings only
            continue
        a = list(csv.DictReader(path.open()))
        b = list(csv.DictReader((tmp_path / "2" / path.name).open()))
        assert len(a) == len(b), path.name
        for ra, rb in zip(a, b):
            keep = [k for k in ra if "second" not in k and k != "eval_share"]
            assert [ra[k] for k in keep] == [rb[k] for k in keep], path.name
        compared += len(a)
    assert compared > 50
