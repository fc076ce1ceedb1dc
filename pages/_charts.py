"""Chart helpers of the explorer's pages: layouts that keep legends off titles, theme-neutral colour scales."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from pages import _common as common

#: Plan / map mass: transparent at zero, so empty cells show the theme's background (light or dark mode) and
#: only mass is coloured.
MASS_SCALE = [[0.0, "rgba(31,119,180,0.0)"], [0.02, "rgba(31,119,180,0.25)"], [0.3, "rgba(31,119,180,0.7)"],
              [1.0, "rgba(255,127,14,1.0)"]]
#: Cost and other dense values: a perceptual scale readable on both backgrounds.
DENSE_SCALE = "Viridis"
#: Differences (points): red below zero, blue above, transparent at zero.
DIFF_SCALE = [[0.0, "rgba(214,39,40,1)"], [0.5, "rgba(127,127,127,0.08)"], [1.0, "rgba(31,119,180,1)"]]


def layout(fig: go.Figure, title: str | None = None, height: int = 380, legend: str = "bottom") -> go.Figure:
    """Title at the top; legend below the plot (``'bottom'``), on the right (``'right'``) or hidden (``None``).

    A legend below never covers subplot titles (as a legend placed between the title and the plot does).
    """
    if legend == "bottom":
        # at the figure's bottom edge (container coordinates), under the x-axis title and rotated tick labels,
        # whatever the plot's height: a legend placed relative to the plot area overlapped the axis title
        where = dict(orientation="h", yref="container", yanchor="bottom", y=0.0, xanchor="left", x=0)
        bottom = 120
    elif legend == "right":
        where = dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02)
        bottom = 40
    else:
        where, bottom = None, 40
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top", x=0, xanchor="left") if title else None,
                      height=height, margin=dict(l=10, r=10, t=60 if title else 30, b=bottom))
    if where is None:
        fig.update_layout(showlegend=False)
    else:
        fig.update_layout(legend=where)
    return fig


def repair_images(cur: common.Current, root: str | None, n: int = 256) -> torch.Tensor:
    """Unlabelled training images for the repairs that use data (``data``, ``refit-data``): the Taylor batches'
    inputs from ``root``, at most ``n``; their labels are dropped here, unread."""
    batches = common.batches_for(cur, "taylor", root)
    return torch.cat([b[0] for b in batches])[:n]


def cached_base(model_key: str, limit, root: str | None = None) -> float | None:
    """Accuracy of the unpruned model on the evaluation subset (of ``root``), or None when its data is absent."""
    try:
        return common.base_accuracy(model_key, common.loaded_for(model_key), limit, root)
    except common.ERRORS:
        return None


def with_selection_style(fig: go.Figure) -> go.Figure:
    fig.update_layout(clickmode="event+select", dragmode="pan")
    return fig

