"""``intrafusion train --arch ... --dataset ...``: train a model and register it in a manifest."""

from __future__ import annotations

import json

from ._common import add_command


def cmd_train(args) -> int:
    from ..experiments.train_zoo import train_zoo_model

    entry = train_zoo_model(args.arch, args.width, args.dataset, args.epochs, seed=args.seed, model_id=args.id,
                            out_dir=args.out, lr=args.lr, batch_size=args.batch_size, progress=not args.quiet,
                            device=args.device)
    print(json.dumps({k: entry[k] for k in ("id", "file", "test_accuracy", "sha256") if k in entry}))
    return 0


def register(subparsers) -> None:
    p = add_command(subparsers, "train", cmd_train, "train a model on a dataset and register it in the zoo manifest")
    p.add_argument("--arch", required=True, choices=["vgg11_bn", "resnet18", "mlp", "mobilenet_v2"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id", help="model id (default ARCH-DATASET)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", help="folder for the weights and its manifest.json (default: ./my_models); a bundled "
                   "checkpoint is never overwritten")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train: auto = CUDA when torch sees a GPU (default), else the CPU")
