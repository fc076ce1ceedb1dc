"""``reproduce --workers N``: the sections of every model as parallel tasks, with the serial run's rows.

A task is one model and one *chain* of sections: a section that reads what an earlier one left in the model
context runs after it in the same task (output preservation reads the data-free section's per-sample
distances); every other section is a task of its own, and a section with independent ``parts`` (the repair
claim: whole model, single groups, fine-tuning) is one task per part, so even a single model's run is split
over the workers. Each task builds its own :class:`.context.ModelContext` (a few seconds of set-up, repeated per
task) and runs with the run's thread count and on the run's device (``settings.device``: a CUDA run gives
each task an equal share of one GPU, see :func:`gpus_per_task`). Rows are put back in the serial order (model
by model, section by section), so the tables equal the serial run's apart from timings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch

from ...parallel import map_tasks
from .context import ModelContext
from .sections import SECTIONS
from .settings import Settings

__all__ = ["DEPENDS_ON", "chains", "gpus_per_task", "run_models_parallel"]

#: section -> the earlier section whose context it reads (they run in one task, in list order).
DEPENDS_ON = {"output_preservation": "datafree"}


def chains(sections=None) -> list[list[str]]:
    """Section names grouped into chains that must share a context, in list order."""
    sections = SECTIONS if sections is None else sections
    out: list[list[str]] = []
    where: dict[str, list[str]] = {}
    for s in sections:
        parent = DEPENDS_ON.get(s.name)
        chain = where.get(parent) if parent else None
        if chain is None:
            chain = []
            out.append(chain)
        chain.append(s.name)
        where[s.name] = chain
    return out


def gpus_per_task(settings: Settings, workers: int) -> float:
    """GPUs each Ray task reserves: none on the CPU; on CUDA ``1 / workers`` (the tasks share one GPU; Ray hides
    the GPUs from a task that reserves none)."""
    return 1.0 / max(int(workers), 1) if settings.device.startswith("cuda") else 0.0


def tasks_of(model_id: str) -> list[tuple[str, tuple[str, ...], tuple[str, ...] | None]]:
    """(model, chain, part) tasks of one model: a one-section chain whose section has parts gives a task per
    part (None: the whole chain)."""
    by_name = {s.name: s for s in SECTIONS}
    out = []
    for chain in chains():
        parts = by_name[chain[0]].parts if len(chain) == 1 else ()
        out += [(model_id, tuple(chain), p) for p in parts] if parts else [(model_id, tuple(chain), None)]
    return out


def _run_chain(task: tuple, shared: dict) -> dict:
    """One task: build the model context and run the chain's sections (or one part of one section) on it."""
    model_id, names, part = task
    torch.set_num_threads(shared["threads"])  # the serial run's thread count: the same arithmetic
    t0, cpu0 = time.perf_counter(), time.process_time()
    ctx = ModelContext(model_id, shared["settings"], False)
    setup = time.perf_counter() - t0
    tables: dict[str, dict[str, list[dict]]] = {}
    by_name = {s.name: s for s in SECTIONS}
    for name in names:
        tables[name] = by_name[name].run(ctx) if part is None else by_name[name].run(ctx, parts=part)
    return {"model": model_id, "sections": names, "part": part, "tables": tables, "info": ctx.info(), "setup": setup,
            "wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}


def run_models_parallel(ids: Sequence[str], settings: Settings, tables: dict[str, list[dict]], workers: int,
                        address: str | None = None, progress: bool = True) -> list[dict]:
    """Every section of every model in ``ids`` on ``workers`` Ray workers; rows appended to ``tables`` in the
    serial order. Returns one info per model (as ``_run_model`` does), its timing merged over its tasks."""
    from .run import _sweep_timing

    tasks = [t for m in ids for t in tasks_of(m)]
    # Longest first: tasks are handed out in this order, so a long section does not start last.
    order = sorted(range(len(tasks)), key=lambda i: _expected_share(tasks[i][1], tasks[i][2]), reverse=True)
    shared = {"settings": settings, "threads": torch.get_num_threads()}
    results: dict[int, dict] = {}
    done = map_tasks(_run_chain, [tasks[i] for i in order], workers=workers, address=address, shared=shared,
                     ordered=False, progress="reproduce" if progress else None,
                     gpus_per_task=gpus_per_task(settings, workers))
    for k, res in done:
        results[order[k]] = res
    infos = []
    for m in ids:
        parts = [results[i] for i, t in enumerate(tasks) if t[0] == m]
        per_section: dict[str, dict[str, list[dict]]] = {}
        for res in parts:  # in task order: a section's parts in their own order
            for name in res["sections"]:
                for table, rows in res["tables"][name].items():
                    per_section.setdefault(name, {}).setdefault(table, []).extend(rows)
        for section in SECTIONS:
            for name, rows in per_section.get(section.name, {}).items():
                tables[name] += rows
        info = parts[0]["info"]
        for res in parts[1:]:
            for key, t in res["info"]["timing"].items():  # a section run in parts: its numbers summed
                old = info["timing"].get(key)
                if isinstance(old, dict) and old is not t and res.get("part") is not None:
                    info["timing"][key] = {k: (old.get(k) or 0) + v if isinstance(v, int | float) else v
                                           for k, v in t.items()}
                else:
                    info["timing"][key] = t
            info["fast_eval"].update(res["info"]["fast_eval"])
            info["importance_seconds"].update(res["info"]["importance_seconds"])
        info["timing"]["setup"] = {"wall_seconds": max(r["setup"] for r in parts), "tasks": len(parts)}
        info["timing"]["total"] = {"wall_seconds": max(r["wall"] for r in parts),
                                   "cpu_seconds": sum(r["cpu"] for r in parts), "workers": workers}
        info["timing"]["tasks"] = [{"sections": list(r["sections"]), "part": list(r["part"] or []),
                                    "wall_seconds": round(r["wall"], 3),
                                    "cpu_seconds": round(r["cpu"], 3), "setup_seconds": round(r["setup"], 3)}
                                   for r in parts]
        tables["sweep_timing"] += _sweep_timing(m, info["timing"])
        if progress:
            print(f"{m}: done ({len(parts)} tasks on {workers} workers)", file=sys.stderr)
        infos.append(info)
    return infos


def _expected_share(names: tuple[str, ...], part: tuple[str, ...] | None = None) -> float:
    """Rough relative cost of a chain or part (from measured full runs), for handing out long tasks first."""
    # CPU seconds of a full vgg11_bn-mnist5k run on 2026-12-03 (docs/BENCHMARK.md)
    cost = {"datafree": 46.0, "output_preservation": 0.5, "finetune": 42.0, "repair": 306.0, "ablations": 14.0,
            "speed": 2.0}
    if part is not None:
        return {"single": 143.0, "whole": 124.0, "finetune": 39.0}.get(part[0], 10.0)
    return sum(cost.get(n, 10.0) for n in names)
