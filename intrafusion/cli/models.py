"""``intrafusion models``: the bundled zoo."""

from __future__ import annotations

import json

from ._common import add_command


def cmd_models(args) -> int:
    from ..models.zoo import list_models

    models = list_models()
    if args.json:
        for e in models:
            d = e.to_dict()
            d["accuracy"] = e.test_accuracy
            print(json.dumps(d, sort_keys=True))
        return 0
    if not models:
        print("no bundled models: assets/models/manifest.json is missing")
        return 1
    print(f"{'id':<27} {'arch':<12} {'width':>5} {'dataset':<11} {'acc %':>6} {'params':>9} {'size':>8}  path")
    for e in models:
        print(f"{e.id:<27} {e.arch:<12} {e.width:>5g} {e.dataset:<11} {e.test_accuracy:>6.2f} {e.params:>9,} "
              f"{e.size_bytes / 1e6:>6.2f}MB  {e.path}")
    return 0


def register(subparsers) -> None:
    p = add_command(subparsers, "models", cmd_models, "list the bundled models")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
