"""Intra-Fusion Explorer: ``streamlit run app.py``.

The entry point: page setup, the shared sidebar model picker (the session's current model) and the navigation
over the pages in ``pages/``. All computation lives in the ``intrafusion`` library; pages only draw.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep, not spin (shared cores)

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # `streamlit run` adds it; AppTest and other runners may not
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))  # shared 2-core machines: more threads only contend

from pages import _common as common  # noqa: E402

common.ensure_app()
# The favicon is an emoji (Streamlit turns it into a data: URL). A ":material/...:" favicon would make the browser
# fetch an SVG from fonts.gstatic.com: Streamlit bundles the Material Symbols font (used by the page icons below,
# drawn locally), not those SVGs. tests/test_browser.py records every request and checks none leaves localhost.
st.set_page_config(page_title="Intra-Fusion Explorer", page_icon="🔀", layout="wide")

PAGES = [
    st.Page("pages/model.py", title="Model", icon=":material/account_tree:", default=True),
    st.Page("pages/importance.py", title="Importance", icon=":material/bar_chart:"),
    st.Page("pages/transport.py", title="Transport plan", icon=":material/grid_on:"),
    st.Page("pages/fusion.py", title="Fusion vs pruning", icon=":material/show_chart:"),
    st.Page("pages/tradeoff.py", title="Sparsity trade-off", icon=":material/query_stats:"),
    st.Page("pages/finetune.py", title="Whole model & fine-tuning", icon=":material/model_training:"),
    st.Page("pages/split_data.py", title="Split data", icon=":material/call_split:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

pg = st.navigation(PAGES)

with st.sidebar:
    keys = common.model_keys()
    if keys:
        if st.session_state.get(common.MODEL_KEY) not in keys:
            st.session_state[common.MODEL_KEY] = common.default_key() or keys[0]
        st.selectbox("Model", keys, key=common.MODEL_KEY, format_func=common.key_label,
                     help="Bundled models, and checkpoints you uploaded on the Model page (yours only).")
    st.caption("Intra-Fusion (Theus et al., ICLR 2024): prune a group's least important neurons, but fuse every "
               "neuron into the kept ones with an optimal-transport map instead of dropping them.")

try:
    pg.run()
finally:  # also after st.stop() or a rerun: once per process, POT and the cost kernel load in the background
    common.warm_up_in_background()
