"""Learn: Intra-Fusion on a toy network small enough to see every neuron, flow and output."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from intrafusion import views as explore
from pages import _common as common

common.ensure_app()

st.title("Learn: when fusing helps, and when dropping wins")
st.markdown(
    """
A **group** is a set of neurons that are pruned together. Every pruning method first gives each neuron an
**importance** score and keeps the m most important.

* **Default pruning** then simply *drops* the others: whatever they computed is lost.
* **Intra-Fusion** keeps the same m neurons but first *fuses* every neuron into them. An **optimal-transport
  plan** P moves each neuron's mass (1/n) onto the kept neurons (capacity 1/m each), preferring close pairs: the
  cost is the distance between the neurons' weight vectors. Each kept neuron becomes a combination of the neurons
  that flow into it.

Below, a tiny network f(x) = Σᵢ vᵢ · relu(wᵢ·x + bᵢ) on 2-D inputs. Each hidden neuron is a point wᵢ (its incoming
weights); twins (A, A′) are copies of the same neuron.
"""
)

ONE_OF_EACH = "one copy of each pair"
BY_L1 = "the m largest by l1 importance"
EXACT_CLAIM = ("The function-preserving map reproduces a network of duplicate neurons exactly only when the kept set "
               "holds one copy of each pair: every removed twin then has a zero-cost partner with room for it.")

c1, c2, c3, c4 = st.columns(4)
scenario = c1.radio("Example", ["Twins (duplicated neurons)", "Random neurons"], key="learn_scenario")
twins = scenario.startswith("Twins")
if twins:
    n_unique = c2.slider("Distinct neurons", 2, 5, 3, key="learn_unique")
    jitter = c3.slider("How different twins are (noise)", 0.0, 0.5, 0.0, 0.05, key="learn_jitter")
    seed = c4.number_input("Seed", 0, 999, 1, key="learn_seed_twins")
    net = explore.toy_network(n_unique, 2, jitter, int(seed))
    sparsity = 0.5
    kept_by = st.radio("Kept set", [ONE_OF_EACH, BY_L1], horizontal=True, key="learn_kept_by",
                       help="Twins have equal l1 importance, so ranking by importance may keep both copies of one "
                            "pair and neither of another.")
    keep = list(range(0, net.n, 2)) if kept_by == ONE_OF_EACH else None
    st.caption("Prune 50%. " + ("Keep A, B, C, … and remove their twins A′, B′, C′, …" if keep is not None else
                                "Keep the m neurons with the largest l1 importance (ties broken by position)."))
else:
    n = c2.slider("Neurons", 4, 12, 8, key="learn_n")
    sparsity = c3.select_slider("Sparsity", [0.25, 0.375, 0.5, 0.625, 0.75], value=0.5, key="learn_sparsity")
    seed = c4.number_input("Seed", 0, 999, 0, key="learn_seed_random")
    net = explore.toy_network(n, 1, 0.0, int(seed))
    keep = None
    st.caption("Neurons kept by l1 importance (the largest weights).")

results = {
    "default": explore.toy_prune(net, sparsity, "default", keep=keep),
    "fusion (paper)": explore.toy_prune(net, sparsity, "fusion", "paper", keep=keep),
    "fusion (function-preserving)": explore.toy_prune(net, sparsity, "fusion", "function-preserving", keep=keep),
}
fusion = results["fusion (paper)"]
show = st.radio("Show the fused neurons of", ["fusion (paper)", "fusion (function-preserving)"], horizontal=True,
                key="learn_show", help="paper: incoming weights SUMMED; function-preserving: AVERAGED")

fig = go.Figure()
xs, ys, widths = [], [], []
for s in range(net.n):
    for t in np.flatnonzero(fusion.plan[s] > 1e-12):
        k = fusion.kept[t]
        if k == s:
            continue
        fig.add_trace(go.Scatter(x=[net.w[s, 0], net.w[k, 0]], y=[net.w[s, 1], net.w[k, 1]], mode="lines",
                                 line=dict(color="#ff7f0e", width=1 + 8 * fusion.plan[s, t] * net.n),
                                 showlegend=False, hoverinfo="text",
                                 text=f"{net.names[s]} → {net.names[k]}: {100 * fusion.plan[s, t] * net.n:.0f}% of "
                                      f"its mass, cost {fusion.cost[s, t]:.2f}"))
kept_mask = np.isin(np.arange(net.n), fusion.kept)
for name, mask, symbol, size, where in (("kept", kept_mask, "circle", 14, "top left"),
                                       ("pruned", ~kept_mask, "circle-open", 24, "top right")):
    idx = np.flatnonzero(mask)  # pruned twins drawn as larger rings, so a twin on top of its partner stays visible
    fig.add_trace(go.Scatter(x=net.w[idx, 0], y=net.w[idx, 1], mode="markers+text", name=name,
                             text=[net.names[i] for i in idx], textposition=where,
                             marker=dict(size=size, symbol=symbol, color=common.COLORS[name], line=dict(width=2))))
fused = results[show].net
fig.add_trace(go.Scatter(x=fused.w[:, 0], y=fused.w[:, 1], mode="markers+text", name=f"fused ({show})",
                         text=[nm + "*" for nm in fused.names], textposition="bottom center",
                         marker=dict(size=14, symbol="star", color="#2ca02c")))
fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", marker=dict(size=6, color="#7f7f7f"), name="origin"))
fig.update_xaxes(title="w₁ (incoming weight from x₁)", zeroline=True)
fig.update_yaxes(title="w₂", scaleanchor="x", scaleratio=1, zeroline=True)
st.plotly_chart(common.figure_layout(fig, "Neurons as points; orange: the transport plan (thicker = more mass)", 480),
                key="toy_points")

angle = st.slider("Direction of the input line (degrees)", 0, 180, 30, key="learn_angle")
t = np.linspace(-2.5, 2.5, 201)
u = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
line = t[:, None] * u[None, :]
out = go.Figure(go.Scatter(x=t, y=net(line), name="original", line=dict(color="black", width=4)))
for label, res in results.items():
    out.add_trace(go.Scatter(x=t, y=res.net(line), name=label, line=dict(color=common.method_color(label),
                                                                       dash="dash" if label == "default" else None)))
out.update_xaxes(title="position along the line x = t·(cos θ, sin θ)")
out.update_yaxes(title="f(x)")
errors = explore.toy_errors(net, results.values())
left, right = st.columns([2, 1])
left.plotly_chart(common.figure_layout(out, "Output of the pruned networks", 380), key="toy_outputs")
bars = go.Figure(go.Bar(x=list(errors), y=list(errors.values()),
                        marker_color=[common.method_color(k) for k in errors],
                        text=[f"{v:.3f}" for v in errors.values()], textposition="outside"))
bars.update_yaxes(title="RMS error vs the original")
right.plotly_chart(common.figure_layout(bars, "Error on a grid of inputs", 380), key="toy_errors")

def _twins_sentence() -> str:
    """What the twins' numbers show, for the kept set chosen (exact only with one copy of each pair)."""
    fp = errors["fusion (function-preserving)"]
    kept = results["default"].kept
    pairs = {net.names[i].rstrip("'") for i in kept}
    one_each = len(pairs) == len(kept)
    paper = "The paper's map (sums on both sides) doubles each fused pair's output, so it loses to dropping. "
    if jitter > 0:
        return paper + "The twins differ (noise), so no map is exact; " + EXACT_CLAIM
    if one_each:
        return paper + EXACT_CLAIM + " Here it does: the function-preserving error is zero."
    bases = [net.names[i].rstrip("'") for i in kept]
    both = sorted({b for b in bases if bases.count(b) > 1})
    verdict = (f"here the error is {fp:.3f}: the plan had to merge different neurons" if fp > 1e-9 else
               "here the plan happened to give a kept copy's slot to a whole removed pair, so it is still exact")
    return (paper + EXACT_CLAIM + f" With l1 importance the twins tie, and both copies of {', '.join(both)} were "
            f"kept while another pair lost both: {verdict}.")


best = min(errors, key=errors.get)
st.info(f"Here the smallest error is **{best}** ({errors[best]:.3f}); default pruning {errors['default']:.3f}, "
        f"paper fusion {errors['fusion (paper)']:.3f}, function-preserving fusion "
        f"{errors['fusion (function-preserving)']:.3f}. "
        + (_twins_sentence() if twins else
           "With random (dissimilar) neurons a fused neuron averages directions that point different ways: its "
           "pre-activation is a compromise that fires where none of the originals did, so dropping the least "
           "important neurons can win. Fusion pays off when pruned neurons resemble kept ones (small cost)."))
st.subheader("Why pruning every layer collapses, and what repair restores")
grid = explore.toy_grid()
fused_results = [results["fusion (paper)"], results["fusion (function-preserving)"]]
ratio_fig = go.Figure()
for res in fused_results:
    ratio_fig.add_trace(go.Bar(x=res.net.names, y=explore.toy_std_ratios(net, res, grid), name=res.method,
                               marker_color=common.method_color(res.method)))
ratio_fig.add_hline(y=1.0, line_dash="dot", line_color=common.COLORS["unpruned"])
ratio_fig.update_yaxes(title="std after / std before", rangemode="tozero")
ratio_fig.update_xaxes(title="kept neuron")
ratio_fig.update_layout(barmode="group")
repaired = [explore.toy_moment_match(net, res, grid) for res in fused_results]
repair_errors = explore.toy_errors(net, fused_results + repaired, grid)
left, right = st.columns([3, 2])
left.plotly_chart(common.figure_layout(ratio_fig, "Spread of each kept neuron's pre-activation, after over before",
                                       340), key="toy_std_ratios")
right.dataframe([{"map": k.removesuffix(" + moments"), "repair": "moments" if k.endswith("+ moments") else "none",
                  "RMS error": round(v, 4)} for k, v in repair_errors.items()], hide_index=True, key="toy_repair")
right.caption("Moment matching on this toy: each kept neuron's pre-activation gets back the mean and std it had "
              "before pruning (measured on the input grid).")
st.markdown(
    """
* **Sums overshoot.** The paper's map adds up the incoming weights of the neurons fused into a kept one, so its
  pre-activation spreads about n/m times wider (the bars above 1; exactly 2 with twins at 50%). The outgoing side
  is summed too, and in a deep network the next layer's inputs are those inflated channels: the factors multiply
  layer after layer and the logits blow up.
* **Averages collapse.** The function-preserving map averages the incoming weights instead. Averaging neurons that
  point in different directions gives a shorter vector, so the spread shrinks (bars below 1); compounded over
  every pruned layer the signal fades towards the biases and the network ends up predicting one class.
* **Moment matching restores the scale.** Give every kept channel back the mean and standard deviation it had
  before pruning. A CNN stores them in its BatchNorm layers (running mean and variance, β and |γ| after folding),
  so the `moments` repair needs no data; `synthetic` re-estimates them on a batch optimised to match those
  statistics, `data` on a few hundred unlabelled training images (it *uses data*). With twins this undoes the
  paper map's doubling exactly. It fixes the scale, not the direction: on random neurons in a single layer it can
  even raise the error (see the table), and its value shows in deep networks, where scale errors compound. The
  *Whole model* page plots these ratios layer by layer for a real model, with and without repair.
* **Refitting repairs what the next layer reads.** Re-estimating BatchNorm statistics gives each channel back its
  mean and spread, two numbers per channel. It cannot undo what merging or dropping did to the *consumers*: the
  next layer's weights were learned for the original channels, and now read one merged channel through a summed
  (or averaged) weight, or miss a dropped channel's contribution entirely; no per-channel rescaling puts that
  back. The `refit-synthetic` repair refits the weights themselves, layer by layer from the input to the
  classifier: it runs the synthetic batch (matched to the stored BatchNorm statistics, so no data) through both
  networks, takes the pruned layer's inputs X (produced by the layers already refitted before it) and the
  original layer's outputs Y mapped to the kept channels (the map-weighted average of the channels each was made
  from), and solves the least-squares problem min ‖XW − Y‖² + λ‖W − W₀‖² in closed form,
  **W = (XᵀX + λI)⁻¹(XᵀY + λW₀)**: the weights that best reproduce the original's outputs, pulled towards the
  method's own weights W₀ (a small λ keeps a layer with more weights than examples, like the classifier, close
  to W₀). One solve per layer: no gradient step, no label, about a second for a small VGG. `refit-data` does the
  same on unlabelled training images (it *uses data*). With nothing pruned W₀ already solves it exactly, so the
  network is unchanged.
"""
)

with st.expander("Why sums inflate logits, what repair does, a glossary and things to try"):
    st.markdown(
        """
**Why sums compound.** The paper's map adds the incoming weights of the neurons fused into a target *and* their
outgoing weights. One fused layer then scales its contribution by about (1 + share moved) twice; pruning every
group multiplies such factors layer after layer, so logits grow and accuracy falls although each plan is sensible.
The function-preserving map averages the incoming side, which keeps each layer's scale.

**Repair (moment matching).** After pruning, re-estimate each layer's per-channel mean and variance on a few
inputs (real, synthetic or none) and rescale/shift the channels to match the unpruned model's statistics. It
undoes the inflation above without training. **Repair (refit)** goes further: every layer's weights are refitted
by ridge regression to the original's outputs on those inputs (`refit-synthetic`: no data; `refit-data`: uses
unlabelled training images). Pick them under *Repair* on the Transport plan, sweep, trade-off, whole-model and
export pages when this version of the library provides them.

**Glossary.** *Group*: channels that must be pruned together. *Importance*: a score per channel (l1 = size of its
weights). *Sparsity s*: fraction of a group's channels removed; m = int(n(1 − s)) kept. *Cost C*: distance between
two channels' weight vectors. *Transport plan P*: how much of each source's mass goes to each target. *Map T*: the
plan turned into weights (T = Pᵀ diag(1/μ)). *Fuse*: replace each kept channel by its T-weighted combination.

**Try this.** 1. Twins, noise 0: function-preserving error 0, paper fusion twice default. 2. Raise the noise to
0.3: the plan still pairs twins, errors grow slowly. 3. Random neurons, sparsity 0.75: compare default and fusion.
4. On *Transport plan*, click a pruned neuron and look at its cost to the nearest target: small cost = fusion helps.
"""
    )

if twins and keep is not None:
    x0 = 1.5 * net.w[:1] / np.linalg.norm(net.w[0])  # a point where neuron A is active
    a = net.contributions(x0)[0]
    pair = a[0] + a[1]
    st.markdown(
        f"""
**Sum or average?** At x = ({x0[0, 0]:.2f}, {x0[0, 1]:.2f}), twins A and A′ contribute
{a[0]:.3f} + {a[1]:.3f} = **{pair:.3f}** to the output. After pruning A′:

* default pruning keeps A only: **{results['default'].net.contributions(x0)[0][0]:.3f}** (half of the pair lost);
* Intra-Fusion, paper normalisation: A* gets wA + wA′ and vA + vA′ — incoming and outgoing weights both summed,
  so its contribution is **{results['fusion (paper)'].net.contributions(x0)[0][0]:.3f}** (twice the pair's);
* Intra-Fusion, function-preserving: A* gets the *average* of the incoming weights and the *sum* of the outgoing
  ones: **{results['fusion (function-preserving)'].net.contributions(x0)[0][0]:.3f}**, exactly the pair's.

With exact twins the plan sends every twin entirely to its partner (cost 0), so function-preserving fusion loses
nothing at all. Add noise to the twins, or switch to random neurons, to see the plan compromise. In real networks
the paper's map is sometimes *more* accurate despite not preserving the function: the explorer's Fusion vs pruning
page lets the data decide.
"""
    )
