"""``intrafusion reproduce``: the paper's claims on the bundled zoo."""

from __future__ import annotations

from ._common import add_command
from .sweep import _workers


def cmd_reproduce(args) -> int:
    from ..experiments.reproduce import run_reproduction, terminal_summary

    # One torch thread unless --threads says otherwise: the run is many small operations, and on shared cores
    # extra OpenMP threads mostly wait at barriers (see run_reproduction).
    summary = run_reproduction(models=args.model, out_dir=args.out, quick=args.quick, progress=not args.quiet,
                               threads=args.threads or 1, workers=args.workers, address=args.address,
                               device=args.device)
    print(terminal_summary(summary, args.out))
    return 0


def register(subparsers) -> None:
    from ..device import DEVICES

    p = add_command(subparsers, "reproduce", cmd_reproduce,
                    "reproduce the paper's claims on the bundled zoo (one torch thread unless --threads is given)")
    p.add_argument("--quick", action="store_true", help="the default model, a few cells (about a minute)")
    p.add_argument("--model", "--models", dest="model", nargs="+",
                   help="bundled model ids or model sets: all, small, paper-scale (default: small, every bundled "
                        "model but the float16 paper-scale ones)")
    p.add_argument("--out", default="results", help="output folder for CSV/JSON/PNG and RESULTS.md")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=_workers, default=1,
                   help="parallel workers (Ray): each model's sections run as tasks; 1 runs in this process")
    p.add_argument("--address", help="Ray cluster to run on (default $RAY_ADDRESS, else a local instance)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the transport cost, the evaluation and the fine-tuning run (auto: CUDA when "
                        "available)")
