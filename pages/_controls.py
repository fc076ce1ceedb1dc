"""Controls shared by the explorer's pages: transport options, methods and repairs (only those that exist)."""

from __future__ import annotations

import streamlit as st

from intrafusion.core.prune import TransportOptions
from intrafusion.core.transport import MARGINALS, NORMALIZATIONS, SOLVERS, TARGET_MARGINALS, TARGETS
from intrafusion.views.variants import Variant, available_methods, available_repairs, uses_data

P_VALUES = [1.0, 2.0, 0.5, 3.0]
P_LABEL = "Order p of the norm"
P_HELP = "the cost between two channels is the p-norm ‖x − y‖_p of the difference of their feature vectors"


def transport_controls(prefix: str, columns=None, *, normalization: bool = False) -> dict:
    """Solver, Sinkhorn reg, marginals, targets and p (and the normalisation): the option dict chosen.

    Widget keys are ``f"{prefix}_solver"`` etc., so a page can hold several independent sets (settings A, B).
    """
    o = columns if columns is not None else st.columns(6)
    solver = o[0].selectbox("Solver", SOLVERS, key=f"{prefix}_solver",
                            help="emd: exact (the paper); sinkhorn: entropic, spreads mass")
    reg = o[1].number_input("Sinkhorn reg", 0.001, 10.0, 0.05, step=0.01, format="%.3f", key=f"{prefix}_reg",
                            disabled=solver != "sinkhorn", help="relative to the largest cost")
    mu = o[2].selectbox("Source marginal μ", MARGINALS, key=f"{prefix}_mu")
    nu = o[3].selectbox("Target marginal ν", TARGET_MARGINALS, key=f"{prefix}_nu",
                        help="nearest: each kept channel's share of the channels closest to it (unequal clusters)")
    target = o[4].selectbox("Targets", TARGETS, key=f"{prefix}_target",
                            help="kept: the m kept channels (the paper); centroids: m k-means centroids")
    p = o[5].selectbox(P_LABEL, P_VALUES, key=f"{prefix}_p", help=P_HELP)
    out = {"solver": solver, "reg": float(reg), "source_marginal": mu, "target_marginal": nu, "target": target,
           "p": float(p)}
    if normalization:
        out["normalization"] = st.radio("Map normalisation", NORMALIZATIONS, horizontal=True, key=f"{prefix}_norm",
                                        help="paper: fused channels are SUMS on both sides; function-preserving: "
                                             "producers averaged, consumers summed")
    return out


def options_tuple(options: dict) -> tuple:
    """Sorted (name, value) pairs without the normalisation (a Variant's ``options``), validated."""
    TransportOptions(**options)  # a clear error for a bad combination, before any job starts
    return tuple(sorted((k, v) for k, v in options.items() if k != "normalization"))


def method_labels() -> list[str]:
    """'default', one 'fusion (<normalisation>)' per normalisation, and 'folding' when the library has it."""
    labels = ["default"] + [f"fusion ({nm})" for nm in NORMALIZATIONS]
    if "folding" in available_methods():
        labels.append("folding")
    return labels


def variant_for(label: str, repair: str = "none", options: tuple = (), setting: str = "",
                refit_target: str = "mapped") -> Variant:
    if label.startswith("fusion ("):
        return Variant("fusion", label[len("fusion (") : -1], options, repair, setting, refit_target)
    return Variant(label, None, (), repair, setting, refit_target)


#: The refit repairs' targets (RepairOptions.target) and what each means.
REFIT_TARGETS = ("mapped", "kept", "closest")
REFIT_TARGET_HELP = ("For the refit repairs only. **mapped**: refit each kept channel to the average of the "
                     "channels merged into it. **kept**: to the kept channel's own outputs. **closest**: both, "
                     "keeping the one whose logits on the repair's inputs stay closer to the original's (no label).")
CRITERION_HELP = ("**l1** is computed on the BatchNorm-folded weights (the paper's); **l1-raw** on the weights as "
                  "trained. **auto** prunes with both and keeps the model whose logits on the synthetic batch (or "
                  "the repair's images) stay closest to the original's: no label, about twice the time.")


def criterion_label(criterion: str) -> str:
    return "auto (l1 or l1-raw, no label)" if criterion == "auto" else criterion


REPAIR_HELP = {
    "none": "no repair: the pruned model as it comes out of pruning",
    "bias": "no data: every consumer's bias absorbs the expected contribution the dropped or merged channels "
            "removed or added",
    "moments": "no data: give every kept channel back the mean and std its BatchNorm stored (bias corrected)",
    "synthetic": "no real data: re-estimate the statistics on a batch optimised from noise to match the stored "
                 "BatchNorm statistics (made once per model, cached; needs BatchNorm layers)",
    "data": "USES DATA: re-estimate the statistics on a few hundred unlabelled training images (never a label)",
    "refit-synthetic": "no real data: refit every layer to the original's outputs on the synthetic batch (least "
                       "squares, closed form, no gradient step; needs BatchNorm layers for the batch)",
    "refit-data": "USES DATA: refit every layer to the original's outputs on unlabelled training images (least "
                  "squares, closed form, never a label)",
}

#: Marker of each repair kind on the curves (colour = method, line style = setting or repaired): filled for a
#: repair without real data, open for one that uses data.
REPAIR_SYMBOLS = {
    "none": "circle",
    "bias": "triangle-up",
    "moments": "square",
    "synthetic": "diamond",
    "data": "diamond-open",
    "refit-synthetic": "star",
    "refit-data": "star-open",
}


def repair_label(kind: str) -> str:
    """'data (uses data)' for a repair that reads training images, else the kind itself."""
    return f"{kind} (uses data)" if uses_data(kind) else kind


def repair_of(label: str) -> str:
    """The repair kind in a variant label: 'fusion (paper) + refit-synthetic (closest) repair [A]' ->
    'refit-synthetic' (the refit's target, in brackets, is not part of the kind)."""
    base = label.removesuffix(" [A]").removesuffix(" [B]")
    _, plus, rest = base.partition(" + ")
    return rest.removesuffix(" repair").partition(" (")[0] if plus else "none"


def repair_marker(label: str) -> dict:
    """Plotly marker of a variant label's repair (:data:`REPAIR_SYMBOLS`; a circle for an unknown kind)."""
    return {"symbol": REPAIR_SYMBOLS.get(repair_of(label), "circle"), "size": 8}


_GLYPHS = {"circle": "●", "triangle-up": "▲", "square": "■", "diamond": "◆", "diamond-open": "◇", "star": "★",
           "star-open": "☆"}


def repair_legend(labels) -> str | None:
    """A caption naming the marker of every repair among the variant ``labels`` (None when none is repaired)."""
    kinds = list(dict.fromkeys(repair_of(lb) for lb in labels))
    if all(k == "none" for k in kinds):
        return None
    marks = ", ".join(f"{_GLYPHS.get(REPAIR_SYMBOLS.get(k, 'circle'), '●')} {repair_label(k)}" for k in kinds)
    return f"Colour: method. Marker: repair ({marks}; open markers: the repair reads unlabelled training images)."


def repair_select(key: str, container=None, multi: bool = True, default=("none",)):
    """The repair kinds that exist (just 'none' until the library provides repair); the ones that read training
    images (``data``, ``refit-data``) say that they use data."""
    where = container if container is not None else st
    kinds = list(available_repairs())
    help_ = ("  \n".join(f"**{k}**: {REPAIR_HELP.get(k, '')}" for k in kinds) if len(kinds) > 1 else
             "repair is not available in this version of the library")
    if multi:
        return where.multiselect("Repair", kinds, default=[k for k in default if k in kinds] or kinds[:1], key=key,
                                 help=help_, format_func=repair_label)
    first = next((k for k in default if k in kinds), kinds[0])
    return where.selectbox("Repair", kinds, index=kinds.index(first), key=key, help=help_, format_func=repair_label)
