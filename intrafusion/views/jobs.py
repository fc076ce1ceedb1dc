"""Background jobs for the explorer: long work (sweeps, trade-off curves, fine-tuning) in a worker thread.

A :class:`BackgroundJob` owns one daemon thread that computes a list of tasks one after the other. Each task
may emit any number of *rows* (a sweep cell emits one, a fine-tuning run emits one per epoch). The page that
started the job keeps it in its session and only *reads* it (a snapshot of the rows, the progress, the
status), so the page never blocks: it polls, and the user can use other controls or pages meanwhile.

Stop is immediate for the reader and exact for the rows: :meth:`BackgroundJob.stop` takes the same lock the
worker holds when it appends a row, so once ``stop()`` returns no row is ever added, even when the task being
computed finishes later (its result is dropped). The worker itself ends after its current task (tasks that
accept ``should_stop`` end sooner: fine-tuning checks it after every batch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BackgroundJob", "BoundedMemo", "Emit", "JobSnapshot"]

#: ``emit(row) -> bool``: add a row; False when the job was stopped (the row was dropped).
Emit = Callable[[Any], bool]


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state for one redraw (rows are a new list; rows themselves are shared)."""

    rows: list
    done_tasks: int
    total: int
    state: str
    error: str | None

    @property
    def progress(self) -> float:
        return self.done_tasks / self.total if self.total else 1.0


@dataclass(eq=False)
class BackgroundJob:
    """Tasks computed one at a time in a worker thread, their rows readable and the job stoppable at any time.

    Parameters
    ----------
    tasks : sequence
        What to compute, in order (e.g. sweep cells).
    compute : callable (task, emit, should_stop) -> object
        Computes one task and calls ``emit(row)`` for every row it produces; its return value is kept in
        ``results[i]``. ``should_stop()`` becomes True after :meth:`stop` (long tasks check it to end early).
    settings : dict
        What was asked for (shown with the results, used to redraw and to name downloads).

    Attributes
    ----------
    rows : list
        Rows emitted so far (read them through :meth:`snapshot` from another thread).
    results : dict
        Task index -> return value of ``compute``.
    error : str or None
        The message of the exception that ended the job.
    stopped_rows : int or None
        How many rows there were when :meth:`stop` was called (the count never grows after it).
    """

    tasks: Sequence
    compute: Callable[[Any, Emit, Callable[[], bool]], Any] = field(repr=False)
    settings: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    results: dict = field(default_factory=dict, repr=False)
    error: str | None = None
    stopped_rows: int | None = None
    done_tasks: int = 0
    started_at: float | None = None
    finished_at: float | None = None

    def __post_init__(self):
        self.tasks = list(self.tasks)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------------------------------- control

    def start(self) -> BackgroundJob:
        """Start the worker thread (once). Returns the job."""
        if self._thread is not None:
            raise RuntimeError("this job was already started: make a new job to run again")
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._work, name="intrafusion-job", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop now: no row is added after this returns (a task being computed has its rows dropped)."""
        with self._lock:
            if not self._stop.is_set() and not self.done:
                self._stop.set()
                self.stopped_rows = len(self.rows)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the worker thread has ended (True) or ``timeout`` seconds passed (False)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------------------------------ state

    @property
    def total(self) -> int:
        return len(self.tasks)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        """The worker thread is still running (after a stop it may finish its current task)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.done_tasks >= self.total

    @property
    def active(self) -> bool:
        """True while the job will still add rows: started, not done, not stopped, not failed."""
        return self._thread is not None and not self.done and not self.stopped and self.error is None

    @property
    def state(self) -> str:
        """'not started', 'running', 'stopped', 'failed' or 'done'."""
        if self.error is not None:
            return "failed"
        if self.stopped:
            return "stopped"
        if self.done:
            return "done"
        return "running" if self._thread is not None else "not started"

    @property
    def progress(self) -> float:
        return self.done_tasks / self.total if self.total else 1.0

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(list(self.rows), self.done_tasks, self.total, self.state, self.error)

    def status(self, unit: str = "cells") -> str:
        """One line for a progress bar, e.g. 'running: 3 of 12 cells'."""
        s = self.snapshot()
        if s.state == "failed":
            return f"failed after {s.done_tasks} of {s.total} {unit}: {s.error}"
        if s.state == "stopped":
            return f"stopped after {s.done_tasks} of {s.total} {unit}"
        if s.state == "done":
            took = f" in {self.finished_at - self.started_at:.1f} s" if self.finished_at and self.started_at else ""
            return f"done: {s.total} {unit}{took}"
        return f"running: {s.done_tasks} of {s.total} {unit}"

    # ----------------------------------------------------------------------------------------- worker

    def _emit(self, row) -> bool:
        with self._lock:  # the lock stop() takes: a row is either in before the stop or never
            if self._stop.is_set():
                return False
            self.rows.append(row)
            return True

    def _work(self) -> None:
        try:
            for i, task in enumerate(self.tasks):
                if self._stop.is_set():
                    return
                result = self.compute(task, self._emit, self._stop.is_set)
                with self._lock:
                    if self._stop.is_set():
                        return
                    self.results[i] = result
                    self.done_tasks = i + 1
        except Exception as exc:  # noqa: BLE001 -- any failure must end the job visibly, not kill the thread silently
            with self._lock:
                self.error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        finally:
            self.finished_at = time.perf_counter()


class BoundedMemo:
    """A thread-safe dict of at most ``size`` entries (oldest dropped first): finished rows by request, so a
    sweep run again (or resumed after a stop) redraws the cells it already has at once."""

    def __init__(self, size: int = 4096):
        from collections import OrderedDict

        self.size = int(size)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            return self._data.get(key, default)

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
