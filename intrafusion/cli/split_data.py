"""``intrafusion split-data ARCH --dataset D --parts K``: split-data training, PaF and FaP (paper section 6)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.repair import REPAIRS
from ._common import add_command
from .sweep import _workers


def cmd_split_data(args) -> int:
    from ..experiments.split_data import SplitDataConfig, quick_config, run_split_data
    from ..experiments.split_data_report import plot, table

    given = {k: getattr(args, k) for k in ("width", "epochs", "finetune_epochs", "sparsity", "train_size",
                                           "test_size", "repair", "fusion", "seed") if getattr(args, k) is not None}
    common = dict(workers=args.workers, address=args.address)
    if args.quick:
        config = quick_config(args.arch, args.dataset, args.parts, **common, **given)
    else:
        config = SplitDataConfig(arch=args.arch, dataset=args.dataset, parts=args.parts, **common, **given)
    result = run_split_data(config, progress=not args.quiet).to_dict()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "split_data.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(result, out / "split_data.png")
    print(json.dumps(result) if args.json else table(result))
    return 0


def register(subparsers) -> None:
    p = add_command(subparsers, "split-data", cmd_split_data,
                    "train k models on k parts of the data in parallel, then PaF and FaP against the whole-data "
                    "model (paper section 6)")
    p.add_argument("arch", choices=["vgg11_bn", "resnet18", "mlp"], help="model architecture")
    p.add_argument("--dataset", required=True, help="mnist5k, animals10k, digits8x8 (bundled) or a torchvision id")
    p.add_argument("--parts", type=int, choices=[2, 3, 4], default=2, help="disjoint training parts = models")
    p.add_argument("--quick", action="store_true",
                   help="small and fast: width 1/16, T=3, F=2, 4000 train and 500 test images (a minute or two)")
    p.add_argument("--workers", type=_workers, default=1, help="parallel training tasks (Ray); 1: in this process")
    p.add_argument("--address", help="Ray cluster (default $RAY_ADDRESS, else a local instance when workers > 1)")
    p.add_argument("--width", type=float, help="width multiplier (default 0.125; --quick 0.0625; mlp 1)")
    p.add_argument("--epochs", type=int, help="T: training epochs of every model (default 10)")
    p.add_argument("--finetune-epochs", type=int, help="F: epochs of each fine-tuning stage (default 4)")
    p.add_argument("--sparsity", type=float, help="fraction of every group's channels pruned (default 0.5)")
    p.add_argument("--train-size", type=int, help="class-balanced training subset (default: all)")
    p.add_argument("--test-size", type=int, help="class-balanced test subset (default: all)")
    p.add_argument("--repair", choices=list(REPAIRS),
                   help="repair step after each pruning (default none); data and refit-data read unlabelled "
                        "training images (never their labels), the others none")
    p.add_argument("--fusion", choices=["activation", "weight"], help="model-fusion cost (default activation)")
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="the whole result as one JSON line")
    p.add_argument("--out", help="folder for split_data.json and split_data.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
