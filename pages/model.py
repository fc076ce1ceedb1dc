"""Model: the current model's accuracy, size and pruning groups; upload a checkpoint."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from intrafusion import views as explore
from intrafusion.data import DATASETS
from pages import _common as common

common.ensure_app()

st.title("Model")


def _on_load() -> None:
    """Load the uploaded checkpoint (a callback: it runs before the page, so it may switch the model)."""
    st.session_state[common.UPLOAD_ERROR] = None
    file = st.session_state.get("upload_file")
    if file is None:
        st.session_state[common.UPLOAD_ERROR] = "choose a checkpoint file first"
        return
    arch = st.session_state.get("upload_arch")
    try:
        key = common.load_upload(file.getvalue(), file.name, None if arch == "infer" else arch,
                                 st.session_state.get("upload_dataset"))
    except common.ERRORS as exc:
        st.session_state[common.UPLOAD_ERROR] = f"Could not load {file.name}: {exc}"
        return
    st.session_state[common.MODEL_KEY] = key


with st.expander("Upload a checkpoint", expanded=not common.zoo_ids()):
    st.caption("safetensors (as exported by this app) or a PyTorch state dict (`torch.save(model.state_dict())`, "
               "loaded with `weights_only=True`: pickles that would run code are refused). The model stays in your "
               "session only.")
    c1, c2 = st.columns(2)
    c1.selectbox("Architecture", ["infer", "vgg11_bn", "resnet18", "mlp"], key="upload_arch",
                 help="'infer' reads it from the file's metadata or its tensor names and shapes")
    c2.selectbox("Dataset it was trained on", list(DATASETS), key="upload_dataset",
                 help="decides the inputs the model is evaluated on")
    if common.DATA_ROOT_INPUT not in st.session_state:  # the box shows the session's folder when the page returns
        st.session_state[common.DATA_ROOT_INPUT] = common.data_root() or ""
    st.text_input("Folder of torchvision datasets (CIFAR-10/100, MNIST, Fashion-MNIST)", key=common.DATA_ROOT_INPUT,
                  on_change=common.set_data_root_from_input,
                  placeholder="empty: $INTRAFUSION_DATA, else ./data",
                  help="Where the real datasets are read from (this session only). The app never downloads: "
                       "an absent dataset gets a message saying what to put in this folder.")
    st.file_uploader("Checkpoint", type=["safetensors", "pt", "pth", "bin", "ckpt"], key="upload_file")
    st.button("Load checkpoint", on_click=_on_load, type="primary")
    if st.session_state.get(common.UPLOAD_ERROR):
        st.error(st.session_state[common.UPLOAD_ERROR])

cur = common.require_model()
loaded = cur.loaded
entry = loaded.entry
st.caption(entry.description if entry is not None and entry.description else
           f"{loaded.config.arch} checkpoint '{loaded.name}', evaluated on {loaded.dataset}")

metrics = st.container()  # filled after the chart: the chart needs only the groups, the metrics need evaluation
try:
    prepared = common.prepared_for(cur.key, loaded).prepared
except common.ERRORS as exc:
    common.show_error(exc, f"Cannot analyse {cur.name}")
    st.stop()

groups = prepared.groups
fig = go.Figure(go.Bar(
    x=[g.index for g in groups], y=[g.n for g in groups],
    marker_color=["#ff7f0e" if g.residual else common.COLORS["kept"] for g in groups],
    text=[f"{g.n}" for g in groups], textposition="outside",
    hovertext=[f"{', '.join(g.producers)} → {', '.join(g.consumers)}" for g in groups],
))
fig.update_xaxes(title="group (0 = nearest the classifier)", dtick=1)
fig.update_yaxes(title="channels n")
st.plotly_chart(common.figure_layout(fig, "Channels per group (orange: residual stream)", 300), key="groups_chart")

with metrics:
    try:
        stats = common.model_stats(cur.key, loaded, common.data_root())
    except common.ERRORS as exc:
        common.show_error(exc, f"Cannot measure {cur.name}")
        st.stop()
    c = st.columns(4)
    c[0].metric("Test accuracy", f"{stats['accuracy']:.2f} %" if stats["accuracy"] is not None else "n/a",
                help=f"on {stats['test_samples']} test images of {loaded.dataset}")
    c[1].metric("Parameters", f"{stats['params']:,}")
    c[2].metric("MACs (one input)", f"{stats['macs']:,}")
    c[3].metric("Pruning groups", len(groups))
    if stats["data_error"]:
        st.error(f"Accuracy unavailable: {stats['data_error']}")

st.subheader("Groups")
st.caption("A group is the set of layers that must lose the same channel together: producers write the channels "
           "(conv/linear outputs), consumers read them (inputs of the next layers). Numbered from the output "
           "backwards, as in the paper.")
group_rows = explore.groups_table(groups)
for row, g in zip(group_rows, groups):  # a layer Intra-Fusion cannot transport leaves only its own groups alone
    row["prunable"] = "yes" if getattr(g, "prunable", True) else f"no: {g.reason}"
# Short columns first and narrow, layer lists last at a medium width: every column stays on screen
# (long producer lists used to push the right-hand columns out of view).
order = ["group", "channels", "residual", "prunable", "layers", "producers", "consumers", "batchnorms"]
st.dataframe(group_rows, hide_index=True, key="groups_table", column_order=order,
             column_config={"group": st.column_config.NumberColumn(width="small"),
                            "channels": st.column_config.NumberColumn(width="small"),
                            "residual": st.column_config.CheckboxColumn(width="small"),
                            "prunable": st.column_config.TextColumn(width="small"),
                            "layers": st.column_config.NumberColumn(width="small", help="producers + consumers"),
                            "producers": st.column_config.TextColumn(width="medium"),
                            "consumers": st.column_config.TextColumn(width="medium"),
                            "batchnorms": st.column_config.TextColumn(width="medium")})

gi = common.group_select(cur, "model_group", "Show the layers a group couples")
st.graphviz_chart(explore.group_dot(groups[gi]))
