"""Shared test settings: two torch threads at most (the CI machine has 2 shared cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Waiting threads sleep instead of spinning: on shared cores a spinning thread steals the other's time
# (a tiny epoch went from 0.03 s to 5 s under load without this). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(2)
