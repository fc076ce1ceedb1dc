"""``intrafusion groups MODEL``: the pruning groups of a model."""

from __future__ import annotations

import json

from ._common import add_command, load_model, model_args


def cmd_groups(args) -> int:
    from ..core.groups import list_groups

    loaded = load_model(args)
    groups = list_groups(loaded.model, loaded.example_inputs)
    if args.json:
        for g in groups:
            print(json.dumps(g.to_dict()))
        return 0
    print(f"{loaded.name}: {len(groups)} groups (0 = nearest the classifier)")
    from ..models.paper_numbering import paper_table_note

    if paper_table_note(loaded.config.arch):
        print(paper_table_note(loaded.config.arch))
    print(f"{'group':>5} {'n':>5} {'residual':>8}  producers -> consumers")
    for g in groups:
        print(f"{g.index:>5} {g.n:>5} {'yes' if g.residual else 'no':>8}  {', '.join(g.producers)} -> "
              f"{', '.join(g.consumers)}" + (f"  [depthwise: {', '.join(g.depthwise)}]" if g.depthwise else "")
              + ("" if g.prunable else f"  [NOT PRUNABLE: {g.reason}]"))
    return 0


def register(subparsers) -> None:
    p = add_command(subparsers, "groups", cmd_groups, "the pruning groups of a model (0 = nearest the classifier)")
    model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per group")
