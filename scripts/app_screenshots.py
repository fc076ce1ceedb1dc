"""Screenshots of every page of the explorer, in the light and the dark theme, to look at (and for docs/img).

    python scripts/app_screenshots.py                       # every page, both themes -> tests/artifacts/screens
    python scripts/app_screenshots.py --docs docs/img       # also copy the few the docs show

Starts `streamlit run app.py` on a free port and drives /usr/bin/chromium with Playwright (never
`playwright install`); the theme is the browser's colour scheme, which Streamlit follows. Waits on the app's
script state, never on fixed times. Also prints every request that left localhost (there should be none).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = ["Model", "Importance", "Transport plan", "Fusion vs pruning", "Sparsity trade-off",
         "Whole model & fine-tuning", "Learn", "Export"]
#: (page, theme) pairs copied to --docs.
DOCS = [("Transport plan", "light"), ("Transport plan", "dark"), ("Whole model & fine-tuning", "light")]
LOCAL = re.compile(r"^(https?://(127\.0\.0\.1|localhost)[:/]|data:|blob:|about:)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def wait_idle(pg, timeout: float = 300.0, settle: float = 0.5) -> None:
    """Until the app has not been running a script for ``settle`` seconds."""
    deadline, quiet = time.time() + timeout, None
    while time.time() < deadline:
        state = pg.locator('[data-testid="stApp"]').get_attribute("data-test-script-state") or ""
        if state in ("running", "rerunRequested", "initial"):
            quiet = None
        elif quiet is None:
            quiet = time.time()
        elif time.time() - quiet >= settle:
            return
        time.sleep(0.05)
    raise TimeoutError("the app kept running")


def visit(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    pg.get_by_role("heading", name=re.compile(re.escape(title.split(" ")[0]))).first.wait_for()
    wait_idle(pg)
    # background work a page starts on its own (e.g. whole-model pruning) has finished: its progress line is gone
    pg.wait_for_function("() => !/running: \\d+ of/.test(document.body.innerText)", timeout=600_000)
    wait_idle(pg)
    if pg.locator(".js-plotly-plot").count():  # charts are drawn a moment after the script sends them
        pg.locator(".js-plotly-plot .main-svg").first.wait_for()


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("streamlit did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "artifacts" / "screens"))
    ap.add_argument("--docs", default=None, help="also copy the pages listed in DOCS to this folder")
    ap.add_argument("--pages", nargs="*", default=PAGES)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = start_server(port)
    external: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for theme in ("light", "dark"):
                pg = browser.new_page(viewport={"width": 1400, "height": 2600}, color_scheme=theme)
                pg.set_default_timeout(300_000)
                pg.on("request", lambda r: None if LOCAL.match(r.url) else external.append(r.url))
                pg.goto(f"http://127.0.0.1:{port}")
                pg.locator(".js-plotly-plot").first.wait_for()
                wait_idle(pg)
                for title in args.pages:
                    visit(pg, title)
                    path = out / f"{_slug(title)}-{theme}.png"
                    pg.screenshot(path=str(path), full_page=True)
                    print(path)
                    if args.docs and (title, theme) in DOCS:
                        Path(args.docs).mkdir(parents=True, exist_ok=True)
                        shutil.copy(path, Path(args.docs) / f"app-{_slug(title)}-{theme}.png")
                pg.close()
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a busy machine: shutting down can take long
            proc.kill()
            proc.wait()
    print("requests outside localhost:", external or "none")


if __name__ == "__main__":
    main()
