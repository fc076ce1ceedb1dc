"""The reproduction run: every section of :data:`.sections.SECTIONS` on every chosen model, then the files.

Which models: bundled ids, or names of :data:`MODEL_SETS` (a set is a rule over the bundled zoo's entries);
to add a set, add one entry there.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ...device import resolve_device
from ...models.zoo import DEFAULT_MODEL, ZooEntry, list_models
from .common import json_default, load_average, write_csv
from .context import ModelContext
from .report import write_results_markdown
from .sections import SECTIONS, make_plots, summarise
from .settings import FULL, QUICK, Settings

__all__ = ["MODEL_SETS", "SWEEP_TIMING_COLUMNS", "resolve_models", "run_reproduction"]

SWEEP_TIMING_COLUMNS = ["model", "section", "cells", "wall_seconds", "prune_seconds", "eval_seconds",
                        "other_seconds", "eval_share"]


def _half_precision(entry: ZooEntry) -> bool:
    """Bundled by ``scripts/build_zoo.py --paper-scale`` (float16 files): the paper's widths, and MobileNetV2."""
    return "--paper-scale" in entry.command


#: Named model sets for ``--model``: name -> the ids it selects from the bundled entries. ``small`` (the
#: default of a full run: its 30 minutes on 2 cores) leaves out the large float16 models; ``paper-scale`` is
#: VGG11-BN and ResNet18 at the paper's widths (groups of up to 512 channels), a much longer run of its own.
MODEL_SETS: dict[str, Callable[[list[ZooEntry]], list[str]]] = {
    "all": lambda entries: [e.id for e in entries],
    "small": lambda entries: [e.id for e in entries if not _half_precision(e)],
    "paper-scale": lambda entries: [e.id for e in entries
                                    if _half_precision(e) and e.arch in ("vgg11_bn", "resnet18")],
}


def resolve_models(models: Sequence[str] | None, quick: bool) -> list[str]:
    """Bundled model ids of a run: ``models`` (ids or :data:`MODEL_SETS` names), else the ``small`` set
    (``quick``: the default model only). Unknown names raise ``ValueError`` listing the known ones."""
    entries = list_models()
    available = [e.id for e in entries]
    if not available:
        raise ValueError("no bundled models: assets/models/manifest.json is missing; train the zoo first "
                         "(see docs/ZOO.md)")
    if not models:
        return [DEFAULT_MODEL if DEFAULT_MODEL in available else available[0]] if quick else \
            (MODEL_SETS["small"](entries) or available)
    unknown = [m for m in models if m not in available and m not in MODEL_SETS]
    if unknown:
        raise ValueError(f"unknown bundled model(s) {', '.join(unknown)}; bundled models: {', '.join(available)}; "
                         f"model sets: {', '.join(MODEL_SETS)}")
    ids = [i for m in models for i in (MODEL_SETS[m](entries) if m not in available else [m])]
    return list(dict.fromkeys(ids))


def run_reproduction(models: Sequence[str] | None = None, out_dir: str | Path = "results", quick: bool = False,
                     progress: bool = True, settings: Settings | None = None, threads: int | None = 1,
                     workers: int = 1, address: str | None = None, device: str | None = None) -> dict:
    """Run every claim section on bundled models and write tables, plots and ``RESULTS.md`` to ``out_dir``.

    Parameters
    ----------
    models : sequence of str, optional
        Bundled model ids or :data:`MODEL_SETS` names; default: every bundled model (``quick``: the default
        model only).
    out_dir : path
        Created if needed; existing files of the same names are replaced.
    quick : bool
        Run :data:`QUICK` (a few cells, about a minute) instead of :data:`FULL`.
    progress : bool
        tqdm progress bars on stderr.
    settings : Settings, optional
        Overrides the choice made by ``quick``.
    threads : int or None, default 1
        torch intra-op threads during the run (restored afterwards; None leaves the setting alone). The work is
        many small operations: on shared cores a second OpenMP thread mostly waits at barriers for a busy core
        (measured 4-60x slower per operation when another process holds one of 2 cores), so one thread is the
        robust default.
    workers : int, default 1
        More than 1: the sections of every model run as Ray tasks (:mod:`.workers`) on that many local
        workers (or on the cluster at ``address`` / ``$RAY_ADDRESS``); the tables equal the serial run's.
    device : {'auto', 'cpu', 'cuda'}, optional
        Where transport costs, evaluations and fine-tuning run (``auto``: CUDA when torch sees a GPU); default
        the settings' own (``cpu``). Resolved before any work (``cuda`` without a GPU raises ``ValueError``) and
        recorded as ``settings.device``. On the CPU the tables are those of a run without a device; on CUDA they
        equal them within float tolerance.

    Returns
    -------
    dict
        The summary also written to ``summary.json``.
    """
    settings = settings or (QUICK if quick else FULL)
    settings = replace(settings, device=str(resolve_device(device or settings.device)))  # fails before any work
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(models, out_dir, quick, progress, settings, workers, address)
    finally:
        torch.set_num_threads(previous)


def _run(models, out_dir, quick: bool, progress: bool, settings: Settings | None, workers: int = 1,
         address: str | None = None) -> dict:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    settings = settings or (QUICK if quick else FULL)
    ids = resolve_models(models, quick)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict]] = defaultdict(list)
    if workers > 1 or address:
        from .workers import run_models_parallel

        infos = run_models_parallel(ids, settings, tables, workers, address, progress)
    else:
        infos = [_run_model(model_id, settings, progress, tables) for model_id in ids]
    t_plots = time.perf_counter()
    _write_tables(out, tables)
    summary = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m intrafusion reproduce" + (" --quick" if settings.name == "quick" else "")
        + (f" --model {' '.join(ids)}" if models else "")
        + (f" --device {settings.device.split(':')[0]}" if settings.device != "cpu" else ""),
        "settings": settings.to_dict(),
        "environment": {"torch": torch.__version__.split("+")[0], "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine()},
        "models": infos,
        "findings": summarise(tables, infos),
    }
    summary["plots"] = make_plots(out, tables, infos)
    summary["plot_seconds"] = round(time.perf_counter() - t_plots, 2)
    summary["elapsed_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    summary["load_average"] = load_average()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default) + "\n")
    write_results_markdown(out, out / "RESULTS.md")
    if progress:
        print(f"reproduction finished in {summary['elapsed_seconds']:.0f} s; results in {out}", file=sys.stderr)
    return summary


def _run_model(model_id: str, settings: Settings, progress: bool, tables: dict[str, list[dict]]) -> dict:
    """Every section on one model; its rows are appended to ``tables``; returns its info for ``summary.json``."""
    t_model, cpu_model = time.perf_counter(), time.process_time()
    ctx = ModelContext(model_id, settings, progress)
    setup = time.perf_counter() - t_model
    for section in SECTIONS:
        for name, rows in section.run(ctx).items():
            tables[name] += rows
    info = ctx.info()
    info["timing"]["setup"] = {"wall_seconds": setup}
    info["timing"]["total"] = {"wall_seconds": time.perf_counter() - t_model,
                               "cpu_seconds": time.process_time() - cpu_model}
    tables["sweep_timing"] += _sweep_timing(model_id, info["timing"])
    if progress:
        print(f"{model_id}: done in {info['timing']['total']['wall_seconds']:.0f} s", file=sys.stderr)
    return info


def _sweep_timing(model_id: str, timing: dict) -> list[dict]:
    """Where the time of each section that prunes and evaluates went (pruning, evaluation, other)."""
    rows = []
    for section in SECTIONS:
        t = timing.get(section.name, {})
        if "prune_seconds" not in t:
            continue
        other = t["wall_seconds"] - t["prune_seconds"] - t["eval_seconds"]
        rows.append({"model": model_id, "section": section.name, "cells": t["cells"],
                     "wall_seconds": round(t["wall_seconds"], 3), "prune_seconds": round(t["prune_seconds"], 3),
                     "eval_seconds": round(t["eval_seconds"], 3), "other_seconds": round(other, 3),
                     "eval_share": round(t["eval_seconds"] / max(t["wall_seconds"], 1e-9), 4)})
    return rows


def _write_tables(out: Path, tables: dict[str, list[dict]]) -> None:
    for section in SECTIONS:
        for name, columns in section.csv.items():
            write_csv(out / f"{name}.csv", tables[name], columns)
        section.write(out, tables)
    write_csv(out / "sweep_timing.csv", tables["sweep_timing"], SWEEP_TIMING_COLUMNS)
