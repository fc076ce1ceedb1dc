"""Shared pieces of the explorer's pages: cached loaders, the session's current model, errors, charts.

Caching rules:

- ``st.cache_resource`` holds objects shared read-only by every session: bundled models, prepared (folded)
  copies, evaluation tensors, pruned models. Nothing here is ever mutated after it is built; pruning and
  fine-tuning work on copies.
- ``st.cache_data`` holds results of identical requests (plans, importance, sweep cells), keyed by plain
  hashable arguments: a model key, group, sparsity, criterion and a tuple of transport options.
- ``st.session_state`` holds what belongs to one person: the chosen model, uploaded models, running and
  finished jobs. Two people never see each other's state.

A model key is ``"zoo:<id>"`` for a bundled model and ``"upload:<sha256 prefix>:<arch>:<dataset>:<file name>"`` for an
uploaded checkpoint (whose LoadedModel lives in the uploader's session only).
"""

from __future__ import annotations

import copy
import hashlib
import threading
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from intrafusion import views as explore
from intrafusion.core.groups import UnsupportedLayerError
from intrafusion.core.prune import PreparedModel, TransportOptions, plan_group, prepare
from intrafusion.data import DATASETS, DatasetUnavailable, Preprocessing, get_info, load_dataset, sample_batches, subset
from intrafusion.evaluate import count_macs_params, evaluate, predict_logits
from intrafusion.models.checkpoint import CheckpointError, load_model
from intrafusion.models.zoo import DEFAULT_MODEL, LoadedModel, list_models, load_zoo_model

#: Errors a page shows with st.error (their messages name the cause and the fix) instead of crashing.
ERRORS = (CheckpointError, UnsupportedLayerError, DatasetUnavailable, ValueError, IndexError, FileNotFoundError)

MODEL_KEY = "model_key"
UPLOADS = "uploaded_models"
UPLOAD_ERROR = "upload_error"

COLORS = {
    "default": "#d62728",
    "fusion (paper)": "#1f77b4",
    "fusion (function-preserving)": "#2ca02c",
    "kept": "#1f77b4",
    "pruned": "#d62728",
    "unpruned": "#7f7f7f",
}
SPARSITIES = [round(0.05 * i, 2) for i in range(0, 20)]


# ------------------------------------------------------------------------------------------ navigation


def ensure_app() -> None:
    """Make sure this run goes through ``app.py``'s ``st.navigation`` (call first in app.py and every page).

    Why it is needed (Streamlit 1.67; there is no public setting for it): ``PagesManager.__init__`` sets the
    class attribute ``uses_pages_directory`` to ``(folder of app.py / "pages").exists()`` the first time a
    session is created in the process, and while it is True ``ScriptRunner`` runs ``_mpa_v1`` instead of the
    entry point: it builds a navigation from ``pages/*.py`` and executes the requested page file alone. Only a
    call to ``st.navigation`` sets the attribute to False (for the whole process). So the first request to a
    fresh server for a page URL (a bookmark), and every AppTest run, would execute the page without app.py's
    page config and sidebar. This function ends the legacy mode and reruns, which sends the same page through
    app.py. The layout keeps ``pages/``; ``tests/test_app.py::test_a_page_url_on_a_fresh_server_goes_through_app_py``
    fails if an upgrade changes this behaviour.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the legacy mode
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


@st.cache_resource(show_spinner=False)
def warm_up_in_background() -> threading.Thread:
    """Once per process, after the first page run: import POT and load the compiled cost kernel in a daemon
    thread (``views.warm_up``), so the Transport plan's first visit does not wait for them."""
    thread = threading.Thread(target=explore.warm_up, name="intrafusion-warm-up", daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------------------------------------ models


def zoo_ids() -> list[str]:
    return [e.id for e in list_models()]


def default_key() -> str | None:
    ids = zoo_ids()
    if not ids:
        return None
    return f"zoo:{DEFAULT_MODEL if DEFAULT_MODEL in ids else ids[0]}"


@st.cache_resource(show_spinner=False, max_entries=16)
def zoo_model(model_id: str) -> LoadedModel:
    """A bundled model, loaded once per process and shared read-only."""
    return load_zoo_model(model_id)


def model_keys() -> list[str]:
    """The models this session can pick: bundled ones, then its own uploads."""
    return [f"zoo:{i}" for i in zoo_ids()] + list(st.session_state.get(UPLOADS, {}))


def key_label(key: str) -> str:
    """'vgg11_bn-mnist5k' or 'uploaded: file.safetensors' (a pure function of the key)."""
    if key.startswith("zoo:"):
        return key[4:]
    parts = key.split(":", 4)
    return f"uploaded: {parts[4]}" if len(parts) == 5 else key


def loaded_for(key: str) -> LoadedModel:
    if key.startswith("zoo:"):
        return zoo_model(key[4:])
    uploads = st.session_state.get(UPLOADS, {})
    if key not in uploads:
        raise ValueError(f"the uploaded model {key} is not in this session any more: upload it again")
    return uploads[key]


@dataclass
class Current:
    """The model this session works on."""

    key: str
    loaded: LoadedModel

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def pre_json(self) -> str:
        return self.loaded.preprocessing.to_json()


def current() -> Current | None:
    """The session's chosen model (None when no model is available); errors are shown, not raised."""
    key = st.session_state.get(MODEL_KEY) or default_key()
    if key is None:
        st.warning(
            "No bundled models found (assets/models/manifest.json is missing). Train them with "
            "`python -m intrafusion train ...` (see docs/ZOO.md) or upload a checkpoint on the Model page."
        )
        return None
    try:
        return Current(key, loaded_for(key))
    except ERRORS as exc:
        st.error(f"Cannot load model {key_label(key)}: {exc}")
        return None


def require_model() -> Current:
    cur = current()
    if cur is None:
        st.stop()
    return cur


def load_upload(data: bytes, filename: str, arch: str | None, dataset: str) -> str:
    """Load uploaded checkpoint bytes into this session; return its model key (raises CheckpointError...)."""
    model, config, meta = load_model(data, None, arch=arch)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    info = get_info(dataset)
    pre = info.preprocessing
    if meta.get("dataset") == dataset and isinstance(meta.get("preprocessing"), dict):
        pre = Preprocessing.from_dict(meta["preprocessing"])
    for p in model.parameters():
        p.requires_grad_(False)
    loaded = LoadedModel(model.eval(), config, dataset, pre, filename or "checkpoint")
    with torch.no_grad():  # a model that does not take this dataset's inputs fails here, with a clear message
        try:
            loaded.model(loaded.example_inputs)
        except RuntimeError as exc:
            raise CheckpointError(
                f"the model does not take {info.name} inputs (shape {tuple(loaded.example_inputs.shape[1:])}): "
                f"{str(exc).splitlines()[0]}. Pick the dataset it was trained on."
            ) from None
    digest = hashlib.sha256(data).hexdigest()[:16]
    key = f"upload:{digest}:{config.arch}:{dataset}:{loaded.name}"
    st.session_state.setdefault(UPLOADS, {})[key] = loaded
    return key


# ------------------------------------------------------------------------------------------ shared state


@dataclass
class Prepared:
    """A folded copy of a model with its graph, and a lock for the rare calls that write to it (Taylor)."""

    prepared: PreparedModel
    lock: threading.Lock


@st.cache_resource(show_spinner=False, max_entries=8)
def prepared_for(model_key: str, _loaded: LoadedModel) -> Prepared:
    return Prepared(prepare(_loaded.model, _loaded.example_inputs), threading.Lock())


DATA_ROOT = "data_root"  # a plain session-state key, never a widget's (widget state is dropped off its page)
DATA_ROOT_INPUT = "data_root_input"  # the Model page's text box; its on_change copies the value to DATA_ROOT


def data_root() -> str | None:
    """This session's folder of torchvision datasets (set on the Model page; None: $INTRAFUSION_DATA or ./data).

    Every cached result that reads data takes this folder as an argument, so it is part of the cache key: two
    sessions (or one session before and after changing the folder) never share a result computed on other data.
    """
    return st.session_state.get(DATA_ROOT) or None


def set_data_root_from_input() -> None:
    """on_change of the Model page's folder box: keep the value where leaving the page does not drop it."""
    st.session_state[DATA_ROOT] = (st.session_state.get(DATA_ROOT_INPUT) or "").strip() or None


def eval_set(dataset: str, pre_json: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Test inputs and labels (a class-balanced subset of ``limit`` samples) from this session's data folder."""
    return _eval_set(dataset, pre_json, limit, data_root())


@st.cache_resource(show_spinner=False, max_entries=16)
def _eval_set(dataset: str, pre_json: str, limit: int | None, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    # download=False: a request never waits minutes for a download; an absent dataset says where to put it
    test = load_dataset(dataset, "test", root=root, preprocessing=Preprocessing.from_dict(pre_json), download=False)
    if limit:
        test = subset(test, int(limit), seed=0)
    x, y = test.tensors
    return x, y


def taylor_batches(dataset: str, pre_json: str, n_batches: int = 4, batch: int = 64) -> list:
    """A few fixed training batches for the Taylor criterion (as the command line uses)."""
    return _taylor_batches(dataset, pre_json, n_batches, batch, data_root())


@st.cache_resource(show_spinner=False, max_entries=8)
def _taylor_batches(dataset: str, pre_json: str, n_batches: int, batch: int, root: str | None) -> list:
    train = load_dataset(dataset, "train", root=root, preprocessing=Preprocessing.from_dict(pre_json), download=False)
    return sample_batches(*train.tensors, n_batches=n_batches, batch=batch)


def batches_for(cur: Current, criterion: str, root: str | None = None):
    """Taylor's training batches from ``root`` (None for the other criteria, which read no data)."""
    return _taylor_batches(cur.loaded.dataset, cur.pre_json, 4, 64, root) if criterion == "taylor" else None


def reference_logits(model_key: str, loaded: LoadedModel, limit: int | None) -> torch.Tensor:
    """Logits of the unpruned model on this session's evaluation subset."""
    return _reference_logits(model_key, loaded, limit, data_root())


@st.cache_resource(show_spinner=False, max_entries=16)
def _reference_logits(model_key: str, _loaded: LoadedModel, limit: int | None, root: str | None) -> torch.Tensor:
    x, _ = _eval_set(_loaded.dataset, _loaded.preprocessing.to_json(), limit, root)
    return predict_logits(_loaded.model, x)


@st.cache_data(show_spinner=False, max_entries=32)
def model_stats(model_key: str, _loaded: LoadedModel, root: str | None = None) -> dict:
    """Parameters, MACs and (when the dataset is in ``root``) test accuracy of the unpruned model.

    ``root`` is part of the cache key: a missing dataset is a result here, and pointing the session at another
    data folder must measure again."""
    macs, params = count_macs_params(copy.deepcopy(_loaded.model), _loaded.example_inputs)
    out = {"params": params, "macs": macs, "accuracy": None, "test_samples": 0, "data_error": None}
    try:
        x, y = _eval_set(_loaded.dataset, _loaded.preprocessing.to_json(), None, root)
    except (DatasetUnavailable, FileNotFoundError) as exc:
        out["data_error"] = str(exc)
        return out
    out["accuracy"] = evaluate(_loaded.model, x, y).accuracy
    out["test_samples"] = len(y)
    return out


def base_accuracy(model_key: str, loaded: LoadedModel, limit: int | None, root: str | None = None) -> float:
    """Accuracy of the unpruned model on ``limit`` test images (None: all) of ``root`` (None: this session's)."""
    return _base_accuracy(model_key, loaded, limit, root or data_root())


@st.cache_data(show_spinner=False, max_entries=32)
def _base_accuracy(model_key: str, _loaded: LoadedModel, limit: int | None, root: str | None) -> float:
    x, y = _eval_set(_loaded.dataset, _loaded.preprocessing.to_json(), limit, root)
    return evaluate(_loaded.model, x, y).accuracy


def importance(model_key: str, cur: Current, group: int, criterion: str) -> np.ndarray:
    """Importance of a group's channels (Taylor reads this session's data folder; the key holds it)."""
    return _importance(model_key, cur, group, criterion, data_root() if criterion == "taylor" else None)


@st.cache_data(show_spinner=False, max_entries=256)
def _importance(model_key: str, _cur: Current, group: int, criterion: str, root: str | None) -> np.ndarray:
    pr = prepared_for(model_key, _cur.loaded)
    batches = batches_for(_cur, criterion, root)
    with pr.lock:
        return explore.importance_scores(pr.prepared, group, criterion, taylor_batches=batches)


@st.cache_resource(show_spinner=False, max_entries=32)
def group_features(model_key: str, _cur: Current, group: int) -> np.ndarray:
    """Feature vectors of a group's channels (read-only, shared)."""
    x = explore.channel_features(prepared_for(model_key, _cur.loaded).prepared, group)
    x.setflags(write=False)
    return x


@st.cache_resource(show_spinner=False, max_entries=32)
def group_cost(model_key: str, _cur: Current, group: int, p: float) -> np.ndarray:
    """Cost between every pair of a group's channels (read-only, shared): every sparsity and option reuses it."""
    c = explore.pairwise_cost(group_features(model_key, _cur, group), p)
    c.setflags(write=False)
    return c


@st.cache_data(show_spinner=False, max_entries=64)
def group_projection(model_key: str, _cur: Current, group: int):
    return explore.projection_2d(group_features(model_key, _cur, group))


def plan_view(model_key: str, cur: Current, group: int, sparsity: float, criterion: str, options: tuple):
    """(GroupRecord without feature vectors, 2-D projection of sources and targets) of one request.

    Kept targets (the paper's setting) reuse the group's cached pairwise cost, so changing the sparsity, the
    criterion or any option but ``p`` only re-solves the transport problem.
    """
    return _plan_view(model_key, cur, group, sparsity, criterion, options,
                      data_root() if criterion == "taylor" else None)


@st.cache_data(show_spinner=False, max_entries=64)
def _plan_view(model_key: str, _cur: Current, group: int, sparsity: float, criterion: str, options: tuple,
               root: str | None):
    opts = TransportOptions(**dict(options))
    pr = prepared_for(model_key, _cur.loaded)
    if opts.target == "kept":
        imp = _importance(model_key, _cur, group, criterion, root)
        cost = group_cost(model_key, _cur, group, opts.p)
        rec = explore.kept_plan(pr.prepared.groups[group], imp, sparsity, criterion, opts, cost)
        base = group_projection(model_key, _cur, group)
        return rec, explore.Projection(base.sources, base.sources[rec.kept], base.explained)
    batches = batches_for(_cur, criterion, root)
    with pr.lock:
        rec = plan_group(pr.prepared, group, sparsity, criterion, opts, taylor_batches=batches, keep_features=True)
    proj = explore.projection_2d(rec.features, rec.target_features)
    rec.features = rec.target_features = None
    return rec, proj


# --------------------------------------------------------------------------------------------- widgets


def group_select(cur: Current, key: str, label: str = "Group", default: int = 0) -> int:
    """A group picker. Its state is kept per model (the options and their labels depend on the model)."""
    groups = prepared_for(cur.key, cur.loaded).prepared.groups
    options = [g.index for g in groups]
    fmt = {g.index: f"{g.index}: {g.n} channels{' (residual)' if g.residual else ''} — {g.producers[0]}"
           for g in groups}
    key = model_widget_key(key, cur)
    if st.session_state.get(key) not in options:
        st.session_state[key] = min(default, len(options) - 1)
    return st.selectbox(label, options, key=key, format_func=fmt.__getitem__)


def model_widget_key(key: str, cur: Current) -> str:
    """The session-state key of a widget whose options depend on the current model."""
    return f"{key}@{cur.key}"


def method_color(label: str) -> str:
    return COLORS.get(label, "#9467bd")


def figure_layout(fig: go.Figure, title: str | None = None, height: int = 380, legend: str = "top") -> go.Figure:
    """Common layout: title at the top, legend under it (``legend='top'``) or on the right (``'right'``)."""
    where = (dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0) if legend == "top" else
             dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02))
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top") if title else None, height=height,
                      margin=dict(l=10, r=10, t=(80 if legend == "top" else 50) if title else 30, b=10),
                      legend=where)
    return fig


def show_error(exc: BaseException, what: str) -> None:
    st.error(f"{what}: {exc}")
