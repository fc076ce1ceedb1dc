"""What a model's pruning groups are: a table and a Graphviz diagram (the Model page).

No Streamlit here: the pages in ``pages/`` draw what these functions return.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.groups import Group


def groups_table(groups: Iterable[Group]) -> list[dict]:
    """One row per group for a table: index, size, producers, consumers, norms, residual.

    Parameters
    ----------
    groups : iterable of Group

    Returns
    -------
    list of dict
        Keys ``group, channels, producers, consumers, batchnorms, residual, layers``; layer lists are
        joined with ", ".
    """
    rows = []
    for g in groups:
        rows.append({
            "group": g.index,
            "channels": g.n,
            "producers": ", ".join(g.producers),
            "consumers": ", ".join(g.consumers),
            "batchnorms": ", ".join(g.norms),
            "residual": bool(g.residual),
            "layers": len(g.producers) + len(g.consumers),
        })
    return rows


def _dot_id(name: str) -> str:
    return '"' + name.replace('"', "'") + '"'


def group_dot(group: Group) -> str:
    """A Graphviz DOT diagram of the layers one group couples.

    Producers (whose output channels are the group's channels) point at a node standing for the n shared
    channels; that node points at the consumers (whose input channels they are). A residual stream says so
    (its producers are added together).

    Parameters
    ----------
    group : Group

    Returns
    -------
    str
        DOT source, e.g. for ``st.graphviz_chart``.
    """
    kind = "residual stream (producers are added)" if group.residual else "channels"
    center = f"group {group.index}\\n{group.n} {kind}"
    lines = [
        "digraph G {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        f'  center [label="{center}", shape=ellipse, fillcolor="#ffd58a"];',
    ]
    for p in group.producers:
        lines.append(f'  {_dot_id("out:" + p)} [label="{p}", fillcolor="#cfe3ff"];')
        lines.append(f'  {_dot_id("out:" + p)} -> center [label="out-channels"];')
    for c in group.consumers:
        lines.append(f'  {_dot_id("in:" + c)} [label="{c}", fillcolor="#d7f5d0"];')
        lines.append(f'  center -> {_dot_id("in:" + c)} [label="in-channels"];')
    if group.norms:
        label = "BatchNorm (folded into the producers)\\n" + ", ".join(group.norms)
        lines.append(f'  norms [label="{label}", fillcolor="#eeeeee"];')
        lines.append("  center -> norms [style=dashed, arrowhead=none];")
    lines.append("}")
    return "\n".join(lines)
