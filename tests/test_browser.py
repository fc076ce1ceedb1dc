"""The explorer in a real browser: `streamlit run app.py` driven by Debian's chromium through Playwright.

Visits every page, runs a sweep and stops it (the points already drawn stay, no more are computed), runs a small
sweep to the end, fine-tunes, exports, and saves a screenshot of each step to tests/artifacts/ (git-ignored).
Skipped when /usr/bin/chromium is absent (`apt-get install -y chromium`; never `playwright install`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from intrafusion.models.zoo import DEFAULT_MODEL, list_models

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SMALL = "mlp-digits8x8"
#: Generous: on a busy 2-core machine (load average 10+) a step can take a minute; tests wait on states, not time.
TIMEOUT_MS = 240_000
LOCAL = re.compile(r"^(https?://(127\.0\.0\.1|localhost)[:/]|data:|blob:|about:)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium not found: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api", reason="the playwright python package is needed: pip install playwright")
    ids = [e.id for e in list_models()]
    if SMALL not in ids or DEFAULT_MODEL not in ids:
        pytest.skip(f"bundled models {SMALL} and {DEFAULT_MODEL} are needed (assets/models): see docs/ZOO.md")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    log = open(ARTIFACTS / "streamlit.log", "w")  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"streamlit did not start: {(ARTIFACTS / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1800})
        pg.set_default_timeout(TIMEOUT_MS)
        pg.requests = []  # every URL the page asked for (checked by test_no_request_leaves_localhost)
        pg.on("request", lambda request: pg.requests.append(request.url))
        # record, then refuse, anything not local: offline it would hang until a timeout
        pg.route(re.compile(r"^https?://(?!(127\.0\.0\.1|localhost)[:/])"), lambda route: route.abort())
        yield pg
        browser.close()


def external_requests(pg) -> list[str]:
    """URLs the page requested outside localhost (data: and blob: URLs never leave the browser)."""
    return [u for u in pg.requests if not LOCAL.match(u)]


def script_state(pg) -> str:
    return pg.locator('[data-testid="stApp"]').get_attribute("data-test-script-state") or ""


def wait_idle(pg, timeout: float = TIMEOUT_MS / 1000, settle: float = 0.5) -> None:
    """Wait until the app has not been running a script for ``settle`` seconds."""
    deadline = time.time() + timeout
    quiet_since = None
    while time.time() < deadline:
        if script_state(pg) in ("running", "rerunRequested", "initial"):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.time()
        elif time.time() - quiet_since >= settle:
            return
        time.sleep(0.05)
    raise AssertionError(f"the app kept running (script state {script_state(pg)!r})")


def no_exception(pg) -> None:
    errors = pg.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def go(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    pg.get_by_role("heading", name=re.compile(title.split(" ")[0])).first.wait_for()
    wait_idle(pg)
    no_exception(pg)


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def plot_points(pg, index: int = 0) -> int:
    """Points drawn in the index-th plotly chart (markers of every trace)."""
    return pg.locator(".js-plotly-plot").nth(index).locator("g.points path").count()


def wait_until(check, timeout: float = TIMEOUT_MS / 1000) -> bool:
    """Poll ``check()`` until it is true (charts are drawn a moment after the script sends them)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def progress_text(pg) -> str:
    bars = pg.locator('[data-testid="stProgress"]')
    return bars.first.inner_text() if bars.count() else ""


def table_rows(pg, index: int = 0) -> int:
    """Data rows of the index-th dataframe (its ARIA grid reports the row count, header included)."""
    grid = pg.locator('[data-testid="stDataFrame"]').nth(index).locator('[role="grid"]')
    return int(grid.get_attribute("aria-rowcount")) - 1


def assert_rows_stay(pg, count: int) -> None:
    """After Stop: the table has ``count`` rows, and still has them after leaving the page and coming back (the
    worker has had every chance to add one; the job's lock guarantees it cannot)."""
    assert wait_until(lambda: table_rows(pg) == count), (table_rows(pg), count)
    go(pg, "Learn")
    go(pg, "Fusion vs pruning")
    pg.get_by_text("Results", exact=True).wait_for()
    assert re.search(rf"stopped after {count} of", progress_text(pg)), progress_text(pg)
    assert table_rows(pg) == count
    no_exception(pg)


def choose_model(pg, model_id: str) -> None:
    pg.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    pg.get_by_role("option", name=model_id).click()
    wait_idle(pg)


def test_every_page_in_chromium(server, page):
    try:
        _walk(server, page)
    except BaseException:
        shot(page, "failure")  # what the browser showed when the test failed
        raise


def _walk(server, page):
    url, t_start = server
    pg = page
    t0 = time.perf_counter()
    pg.goto(url)
    pg.locator(".js-plotly-plot").first.wait_for()
    first_chart = time.perf_counter() - t0
    print(f"\nserver start to first chart: {time.perf_counter() - t_start:.1f} s (page load {first_chart:.1f} s)")
    wait_idle(pg)
    no_exception(pg)
    assert pg.get_by_text("Channels per group").count()
    shot(pg, "01_model")

    go(pg, "Importance")
    assert pg.locator(".js-plotly-plot").count() >= 2
    shot(pg, "02_importance")

    go(pg, "Transport plan")
    assert pg.locator(".js-plotly-plot").count() == 4  # plan heatmap, importance bars, projection, Sankey
    t0 = time.perf_counter()
    pg.get_by_text("Cost C", exact=True).click()
    pg.get_by_text(re.compile(r"^Cost C: \d+ of \d+ sources")).wait_for()
    wait_idle(pg, settle=0.3)
    print(f"transport plan redraw after a control: {time.perf_counter() - t0:.2f} s")
    no_exception(pg)
    shot(pg, "03_transport")

    # a sweep on the default model, stopped after its first points: they stay, and no more are computed
    go(pg, "Fusion vs pruning")
    # every test image per evaluation: slow enough cells to press Stop while it runs
    pg.locator('[data-testid="stSelectbox"]').filter(has_text="Test images per evaluation").click()
    pg.get_by_role("option", name="all", exact=True).click()
    wait_idle(pg)
    pg.get_by_role("button", name="Run sweep").click()
    assert wait_until(lambda: re.search(r"running: [1-9]", progress_text(pg))), progress_text(pg)
    assert wait_until(lambda: plot_points(pg) >= 1)  # the curve started before the sweep ended
    shot(pg, "04_sweep_running")
    t_stop = time.perf_counter()
    pg.get_by_role("button", name="Stop").click()
    pg.get_by_text(re.compile(r"stopped after \d+ of \d+ cells")).first.wait_for()
    print(f"Stop: 'stopped' shown {time.perf_counter() - t_stop:.2f} s after the click")
    wait_idle(pg)
    text = progress_text(pg)
    m = re.search(r"stopped after (\d+) of (\d+)", text)
    assert m and 0 < int(m.group(1)) < int(m.group(2)), text
    pg.get_by_text("Results", exact=True).wait_for()
    assert_rows_stay(pg, int(m.group(1)))
    shot(pg, "05_sweep_stopped")

    # a small sweep to the end on the smallest model
    choose_model(pg, SMALL)
    go(pg, "Fusion vs pruning")
    pg.get_by_role("button", name="Run sweep").click()
    pg.get_by_text(re.compile(r"done: \d+ cells")).wait_for()
    wait_idle(pg)
    no_exception(pg)
    n_cells = int(re.search(r"done: (\d+) cells", progress_text(pg)).group(1))
    assert wait_until(lambda: plot_points(pg) >= n_cells)  # every cell is a point on a curve
    assert pg.get_by_role("button", name="Download CSV").count() == 1
    shot(pg, "06_sweep_done")

    go(pg, "Whole model & fine-tuning")
    pg.get_by_role("button", name="Fine-tune").click()
    pg.get_by_text(re.compile(r"done: \d+ models")).first.wait_for()
    wait_idle(pg)
    no_exception(pg)
    assert wait_until(lambda: plot_points(pg) >= 2 * 4)  # two methods, epochs 0..3
    shot(pg, "07_finetune")

    go(pg, "Learn")
    assert pg.locator(".js-plotly-plot").count() == 4  # neurons, outputs, errors, std ratios
    shot(pg, "08_learn")

    go(pg, "Export")
    pg.get_by_role("button", name="Prune and measure").click()
    pg.get_by_role("button", name=re.compile("Pruned model")).wait_for()
    wait_idle(pg)
    no_exception(pg)
    shot(pg, "09_export")


def test_no_request_leaves_localhost(page):
    """Every request of the tour above went to the local server (fonts, icons and scripts are bundled)."""
    assert page.requests, "the tour made no request at all"
    assert external_requests(page) == []
