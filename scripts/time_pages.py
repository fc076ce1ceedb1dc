"""Time the explorer: cold start to the first chart, every page, and transport-plan redraws at n = 512.

    python scripts/time_pages.py            # browser timings (chromium) + AppTest timings
    python scripts/time_pages.py --no-browser

Browser timings start `streamlit run app.py` in a subprocess and drive /usr/bin/chromium with Playwright: cold
start is measured from launching the server to the first plotly chart drawn in the page; page times from a
click in the sidebar to the end of the script run with its charts on screen. AppTest timings run each page's
script in-process (server-side work only: no network, no drawing). The 512-channel check uploads a full-width
VGG11-BN (random weights, 512-channel groups) and changes one transport control at a time.

Prints Markdown tables (paste them into docs/APP.md) and the machine load, since timings on a shared machine
depend on what else runs. AppTest rows also give the process's CPU seconds (all threads): on a machine busy with
other work they are close to what the step takes on an idle one (the app's work is mostly one thread).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py sets it: idle OpenMP threads sleep, not spin
THREADS = [2]  # torch threads of the in-process (AppTest) timings; --threads changes it

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = [("Model", "model"), ("Importance", "importance"), ("Transport plan", "transport"),
         ("Fusion vs pruning", "fusion"), ("Sparsity trade-off", "tradeoff"), ("Whole model & fine-tuning", "finetune"),
         ("Learn", "learn"),
         ("Export", "export")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_idle(pg, timeout: float = 120.0, settle: float = 0.3) -> None:
    deadline, quiet = time.time() + timeout, None
    while time.time() < deadline:
        state = pg.locator('[data-testid="stApp"]').get_attribute("data-test-script-state") or ""
        if state in ("running", "rerunRequested", "initial"):
            quiet = None
        elif quiet is None:
            quiet = time.time()
        elif time.time() - quiet >= settle:
            return
        time.sleep(0.02)
    raise TimeoutError("the app kept running")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def browser_timings() -> list[tuple[str, float]]:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("streamlit did not start") from None
                time.sleep(0.05)
        rows.append(("server up (health endpoint answers)", time.perf_counter() - t0))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1200})
            pg.goto(url)
            pg.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
            rows.append(("**cold start: launch to first chart**", time.perf_counter() - t0))
            rows.append(("server CPU time used until then (a lower bound on an idle machine)",
                         _cpu_seconds(proc.pid)))
            _wait_idle(pg)
            rows.append(("Model page complete (cold)", time.perf_counter() - t0))
            for title, _ in PAGES[1:] + PAGES[:1]:
                t = time.perf_counter()
                pg.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
                pg.get_by_role("heading").first.wait_for()
                _wait_idle(pg)
                rows.append((f"{title} (first visit)", time.perf_counter() - t))
            pg.locator('[data-testid="stSidebarNav"]').get_by_text("Transport plan", exact=True).click()
            _wait_idle(pg)
            for label in ("function-preserving", "paper"):
                t = time.perf_counter()
                pg.get_by_text(label, exact=True).first.click()
                _wait_idle(pg)
                rows.append((f"Transport plan: normalisation → {label}", time.perf_counter() - t))
            t = time.perf_counter()
            pg.get_by_text("Cost C", exact=True).click()
            _wait_idle(pg)
            rows.append(("Transport plan: show the cost matrix", time.perf_counter() - t))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return rows


def _apptest(model_key: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    if model_key:
        at.session_state["model_key"] = model_key
    return at


def apptest_timings() -> list[tuple[str, float]]:
    import torch

    torch.set_num_threads(THREADS[0])
    rows = []
    t, c = time.perf_counter(), time.process_time()
    at = _apptest().run()
    rows.append(("Model (first run in this process: imports, model, graph)",
                 (time.perf_counter() - t, time.process_time() - c)))
    for title, name in PAGES[1:] + PAGES[:1]:
        t, c = time.perf_counter(), time.process_time()
        at.switch_page(f"pages/{name}.py").run()
        first, first_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        at.run()
        again, again_cpu = time.perf_counter() - t, time.process_time() - c
        assert not at.exception, [e.value for e in at.exception]
        rows.append((f"{title}: first run / rerun", (first, first_cpu, again, again_cpu)))
        _wait_jobs(at)  # background work a page started (whole-model pruning) must not count for the next page
    return rows


def _wait_jobs(at) -> None:
    from intrafusion.views.jobs import BackgroundJob

    for value in list(at.session_state.values()):
        if isinstance(value, BackgroundJob):
            value.wait(600)


WIDE_MODEL = "vgg11_bn_w1-mnist5k"  # the bundled full-width VGG11-BN: groups of 512 channels


def wide_transport_timings() -> list[tuple[str, float]]:
    """Transport-plan page on a 512-channel group: first view and one control change at a time.

    Uses the bundled full-width model when it is there, else uploads a random full-width VGG11-BN."""
    import torch

    from intrafusion import views as explore
    from intrafusion.models.architectures import ArchConfig, build_model
    from intrafusion.models.zoo import list_models
    from intrafusion.views import warm_up

    torch.set_num_threads(THREADS[0])
    warm_up()  # as the app does in the background after its first page
    if WIDE_MODEL in [e.id for e in list_models()]:
        key = f"zoo:{WIDE_MODEL}"
        at = _apptest(key)
        at.run()
    else:
        torch.manual_seed(0)
        cfg = ArchConfig(arch="vgg11_bn", width=1.0, in_channels=1)
        data, _ = explore.export_model(build_model(cfg).eval(), cfg)
        at = _apptest()
        at.run()
        at.selectbox(key="upload_dataset").set_value("mnist5k")
        at.file_uploader(key="upload_file").set_value(("vgg11_bn-w1.safetensors", data, "application/octet-stream"))
        at.run()
        at.button[0].click().run()
        key = at.session_state["model_key"]
        assert key.startswith("upload:"), [e.value for e in at.error]
    print(f"(512-channel timings on {key})")
    rows = []
    t, c = time.perf_counter(), time.process_time()
    at.switch_page("pages/transport.py").run()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    assert at.session_state["tp_group@" + key] == 0
    rows.append(("n = 512 (group 0, s = 0.5, p = 1): first view, incl. the 512 x 512 cost",
                 (time.perf_counter() - t, time.process_time() - c)))
    steps = [
        ("normalisation → function-preserving", lambda: at.radio(key="tp_norm").set_value("function-preserving")),
        ("solver → sinkhorn", lambda: at.selectbox(key="tp_solver").set_value("sinkhorn")),
        ("target marginal → importance", lambda: at.selectbox(key="tp_nu").set_value("importance")),
        ("sparsity → 0.7", lambda: at.select_slider(key="tp_sparsity").set_value(0.7)),
        ("criterion → l2", lambda: at.selectbox(key="tp_criterion").set_value("l2")),
        ("p → 2 (new cost matrix)", lambda: at.selectbox(key="tp_p").set_value(2.0)),
        ("group → 2 (512 channels, new cost)", lambda: at.selectbox(key=f"tp_group@{key}").set_value(2)),
    ]
    for label, action in steps:
        action()
        t, c = time.perf_counter(), time.process_time()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        rows.append((f"n = 512: {label}", (time.perf_counter() - t, time.process_time() - c)))
    return rows


def component_timings() -> list[tuple[str, float]]:
    """CPU seconds (best of 3, this thread) of each step of a Transport plan redraw at n = 512, s = 0.7.

    The steps a control change runs on the server besides Streamlit itself: the plan re-solve on the cached
    cost, the four figures and their JSON. Best-of-3 CPU time is what the step costs on an idle core."""
    import torch

    from intrafusion import views as explore
    from intrafusion.core.prune import TransportOptions, prepare
    from intrafusion.models.zoo import list_models, load_zoo_model
    from pages import _transport_views as views

    if WIDE_MODEL not in [e.id for e in list_models()]:
        return []
    torch.set_num_threads(THREADS[0])
    loaded = load_zoo_model(WIDE_MODEL)
    prepared = prepare(loaded.model, loaded.example_inputs)
    group = prepared.groups[0]
    explore.warm_up()
    imp = explore.importance_scores(prepared, 0, "l1")
    feats = explore.channel_features(prepared, 0)
    cost = explore.pairwise_cost(feats, 1.0)
    base = explore.projection_2d(feats)
    rows = []

    def best(label, fn):
        times = []
        for _ in range(3):
            c = time.process_time()
            out = fn()
            times.append(time.process_time() - c)
        rows.append((label, min(times)))
        return out

    rec = best(f"plan re-solve (kept targets, n = {group.n}, s = 0.7)",
               lambda: explore.kept_plan(group, imp, 0.7, "l1", TransportOptions(), cost))
    proj = explore.Projection(base.sources, base.sources[rec.kept], base.explained)
    order, labels = explore.importance_order(rec.importance), explore.target_labels(rec)
    cols, pick = explore.target_order(rec), int(rec.pruned[0])
    figs = {
        "heatmap": lambda: views.heatmap_figure(rec, order, cols, labels, "Plan P", "all rows", "importance", 32,
                                                False, pick),
        "importance bars": lambda: views.importance_figure(rec, order, pick, "l1"),
        "projection": lambda: views.projection_figure(rec, proj, pick, "kept"),
        "Sankey": lambda: views.sankey_figure(rec, labels, pick),
    }
    for name, make in figs.items():
        fig = best(f"{name} figure", make)
        best(f"{name} JSON", fig.to_json)
    rows.append(("**sum**", sum(v for _, v in rows)))
    return rows


def _table(title: str, rows, header: str = "seconds") -> str:
    lines = [f"| {title} | {header} |", "|---|---|"]
    for name, value in rows:
        shown = " / ".join(f"{v:.2f}" for v in value) if isinstance(value, tuple) else f"{value:.2f}"
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-browser", action="store_true", help="skip the chromium timings")
    parser.add_argument("--no-wide", action="store_true", help="skip the 512-channel transport timings")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the AppTest timings (default 2)")
    args = parser.parse_args()
    THREADS[0] = args.threads
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores visible, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, AppTest torch threads {args.threads}\n")
    if not args.no_browser:
        if Path(CHROMIUM).exists():
            print(_table("Browser (chromium)", browser_timings()) + "\n")
        else:
            print(f"(no browser timings: {CHROMIUM} not found; apt-get install -y chromium)\n")
    print(f"load average now: {os.getloadavg()[0]:.1f}")
    print(_table("AppTest (server-side only)", apptest_timings(),
                 "first run: wall / CPU, rerun: wall / CPU (s)") + "\n")
    if not args.no_wide:
        print(f"load average now: {os.getloadavg()[0]:.1f}")
        print(_table("Transport plan at 512 channels (AppTest)", wide_transport_timings(), "wall / CPU (s)") + "\n")
        print(_table("One Transport plan redraw at 512 channels, step by step", component_timings(),
                     "CPU seconds, best of 3") + "\n")
    load = os.getloadavg()
    print(f"load average afterwards: {load[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
