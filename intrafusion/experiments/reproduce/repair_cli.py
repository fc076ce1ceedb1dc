"""Run only the repair claim of the reproduction (claim 6), or rebuild its report from its tables.

    python -m intrafusion.experiments.reproduce.repair_cli --out results-repair [--quick] [--model ID ...]
        [--parts whole single finetune std] [--methods ...] [--repairs ...]
        [--single-variants METHOD:NORMALIZATION:REPAIR ...] [--finetune-variants ...] [--report-only]

Not imported by the package (so ``python -m`` runs it without a second copy of the claim's modules).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from .repair import FULL_REPAIR, QUICK_REPAIR
from .repair_report import report_only, run_repair_only

__all__ = ["main"]


def _variants(specs):
    """'fusion:function-preserving:synthetic' -> ('fusion', 'function-preserving', 'synthetic'); a fourth part is
    Intra-Fusion's target marginal ('fusion:paper:refit-synthetic:nearest'), a fifth the refit's target
    (mapped, kept, closest), a sixth the importance criterion (l1, l1-raw, or auto: the closer of both)."""
    if not specs:
        return None
    out = []
    for spec in specs:
        parts = spec.split(":")
        if not 3 <= len(parts) <= 6:
            raise SystemExit(f"a variant is METHOD:NORMALIZATION:REPAIR[:MARGINAL[:REFIT_TARGET[:CRITERION]]] "
                             f"(normalisation empty unless fusion): {spec}")
        defaults = ("uniform", "mapped", "l1")  # an empty part keeps the default
        extra = [p or defaults[i] for i, p in enumerate(parts[3:])]
        out.append((parts[0], parts[1] or None, parts[2], *extra))
    return tuple(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m intrafusion.experiments.reproduce.repair_cli",
                                description="Run only the repair claim of the reproduction.")
    p.add_argument("--out", default="results-repair")
    p.add_argument("--model", nargs="+")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--parts", nargs="+", choices=["whole", "single", "finetune", "std"])
    p.add_argument("--methods", nargs="+")
    p.add_argument("--repairs", nargs="+")
    p.add_argument("--single-variants", nargs="+", metavar="M:N:R")
    p.add_argument("--finetune-variants", nargs="+", metavar="M:N:R")
    p.add_argument("--single-eval", type=int)
    p.add_argument("--single-sparsities", type=float, nargs="+")
    p.add_argument("--finetune-max-train", type=int)
    p.add_argument("--finetune-ratios", type=float, nargs="+")
    p.add_argument("--data-images", type=int, help="images of the data repair (0: the whole training split)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the findings and report from --out")
    args = p.parse_args(argv)
    if args.report_only:
        summary = report_only(args.out)
    else:
        rs = QUICK_REPAIR if args.quick else FULL_REPAIR
        changes = {k: v for k, v in {"parts": tuple(args.parts) if args.parts else None,
                                     "methods": tuple(args.methods) if args.methods else None,
                                     "repairs": tuple(args.repairs) if args.repairs else None,
                                     "single_variants": _variants(args.single_variants),
                                     "finetune_variants": _variants(args.finetune_variants),
                                     "single_eval": args.single_eval,
                                     "single_sparsities": tuple(args.single_sparsities or ()) or None,
                                     "finetune_max_train": args.finetune_max_train,
                                     "finetune_ratios": tuple(args.finetune_ratios or ()) or None,
                                     }.items() if v is not None}
        if args.data_images is not None:
            changes["data_images"] = args.data_images or None
        summary = run_repair_only(args.model, args.out, args.quick, not args.quiet,
                                  repair_settings=replace(rs, **changes))
    for c in summary["findings"]["claims"]:
        print(f"{c['verdict']:>12}  {c['claim']}: {c['ours']}")
    print(f"results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
