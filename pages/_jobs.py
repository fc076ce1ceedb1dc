"""Background jobs on the explorer's pages: start, stop, and a live area that polls without blocking.

A job (:class:`intrafusion.views.jobs.BackgroundJob`) lives in ``st.session_state`` under a page's key and runs
in its own worker thread, so the page script returns at once: the user can use other controls or pages while
it runs. :func:`live` draws the job inside ``st.fragment(run_every=...)``: only that area reruns every
``POLL_S`` seconds, its chart keeps its key (and so its identity: it is updated in place, never blanked), and
when the job ends one full rerun redraws the rest of the page (buttons, tables).
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from intrafusion.views.jobs import BackgroundJob, BoundedMemo

POLL_S = 0.5


@st.cache_resource(show_spinner=False)
def memo() -> BoundedMemo:
    """Finished rows by request, shared by every session (rows are results of identical requests)."""
    return BoundedMemo(4096)


@st.cache_resource(show_spinner=False)
def model_memo() -> BoundedMemo:
    """Finished rows that hold whole pruned models (whole-model pruning), shared; few, since models are large."""
    return BoundedMemo(24)


def start(state_key: str, job: BackgroundJob) -> BackgroundJob:
    """Stop the session's previous job under ``state_key`` (if any) and start ``job`` in its place."""
    old = st.session_state.get(state_key)
    if old is not None:
        old.stop()
    st.session_state[state_key] = job
    return job.start()


def stop(state_key: str) -> None:
    job = st.session_state.get(state_key)
    if job is not None:
        job.stop()


def get(state_key: str) -> BackgroundJob | None:
    return st.session_state.get(state_key)


def live(state_key: str, draw: Callable[[BackgroundJob], None]) -> None:
    """Draw the job with ``draw(job)`` in an area that reruns every POLL_S seconds while the job runs.

    When the job ends (done, stopped, failed) the area asks for one full rerun, so the rest of the page
    (Stop disabled, the results below) catches up.
    """
    job = st.session_state.get(state_key)
    running = job is not None and job.active

    @st.fragment(run_every=POLL_S if running else None)
    def _live_area():
        current = st.session_state.get(state_key)
        if current is None:
            return
        draw(current)
        if running and (current is not job or not current.active):
            st.rerun()

    _live_area()


def cell_job(model_key: str, tasks: list, criterion: str, limit: int | None, settings: dict, *,
             keep_distances: bool = False, cost: bool = False, latency: bool = False) -> BackgroundJob:
    """A job that prunes and evaluates (group, sparsity, variant) tasks (see ``views.variants.cell_tasks``).

    Everything the worker needs (model, evaluation tensors, reference logits, Taylor batches, repair images)
    is fetched here, on the script thread, from the shared caches; finished rows are memoised by request.
    Raises the page errors (``common.ERRORS``) when the data is missing.
    """
    from intrafusion.views import variants as var
    from pages import _charts as charts
    from pages import _common as common

    jcur = common.Current(model_key, common.loaded_for(model_key))
    root = common.data_root()  # part of every memo key: rows computed on other data are never reused
    x, y = common.eval_set(jcur.loaded.dataset, jcur.pre_json, limit)
    ref = common.reference_logits(model_key, jcur.loaded, limit)
    batches = common.batches_for(jcur, criterion, root)
    repair_data = charts.repair_images(jcur, root) if any(t[2].uses_data for t in tasks) else None
    rows_memo = memo()
    model, example = jcur.loaded.model, jcur.loaded.example_inputs

    def compute(task, emit, should_stop):
        group, sparsity, variant = task
        key = ("cell", model_key, root, group, sparsity, variant, criterion, limit, keep_distances, cost, latency)
        row = rows_memo.get(key)
        if row is None:
            row = var.evaluate_cell(model, example, x, y, group, sparsity, variant, criterion, reference_logits=ref,
                                    taylor_batches=batches, repair_data=repair_data, keep_distances=keep_distances,
                                    cost=cost, latency=latency)
            rows_memo.put(key, row)
        emit(row)

    return BackgroundJob(tasks, compute, dict(settings, model_key=model_key, criterion=criterion, limit=limit,
                                                    data_root=root))
