"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the app
served by ``flowlake ui`` on 127.0.0.1. Skips locally only when chromium is absent (``make
test`` installs it through scripts/install-chromium.sh); fails under ``CI=true``.

Set ``FLOWLAKE_SCREENSHOT_DIR`` to keep the screenshot (docs/images/ holds the README's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dashboard import build_lake

import store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _need_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    message = "chromium is not installed (scripts/install-chromium.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], deadline_s: float = 90) -> None:
    """Poll Streamlit's health endpoint until it answers ``ok`` (or the server dies)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flowlake ui exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        # a poll interval, not a guess at readiness: the loop ends on the health answer
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer ok within {deadline_s} s")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    _need_chromium()
    lake = build_lake(tmp_path / "lake")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "ui", "--lake", str(lake), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", process)
        yield f"http://127.0.0.1:{port}/", lake
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # `flowlake ui` is the server itself: stopping it leaves nothing serving that port.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the dashboard outlived flowlake ui"


def test_compare_pick_promote_confirm_moves_main(served: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, lake = served
    before = store.open(lake).resolve("main")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1900})
            page.goto(url)
            expect(page.get_by_role("heading", name="Compare")).to_be_visible(timeout=60_000)
            page.get_by_test_id("stSelectbox").first.click()
            page.get_by_role("option", name="cand").click()
            verdict = page.get_by_test_id("stMarkdown").filter(has_text="accuracy: better")
            expect(verdict.first).to_be_visible(timeout=30_000)
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=30_000)
            expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("always-valid sequential intervals").first).to_be_visible(
                timeout=30_000
            )
            shots = Path(os.environ.get("FLOWLAKE_SCREENSHOT_DIR") or tmp_path)
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "dashboard-compare.png"), full_page=True)
            page.get_by_role("button", name="Promote cand").click()
            expect(page.get_by_text("Gate open")).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Confirm: merge cand into main").click()
            expect(page.get_by_text("Promoted: main moved to")).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    after = store.open(lake).resolve("main")
    assert after != before
    assert lake.exists() and store.open(lake).read_bytes("models/clf/model.pkl", "main") == b"v2"
