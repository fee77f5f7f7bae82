"""The live page in a real browser: Debian's Chromium, driven by Playwright (never `playwright install`).

The test stack, a streaming pipeline with the Redis sinks, and ``python -m pipeline dashboard`` as a
process of its own; the page is loaded, an event is committed in Postgres, and the page must show
its content's title on the overall and podcast boards (a duration no other test comes near puts it
first) with the event's exact seconds, pushed over server-sent events (the page is never reloaded),
and its charts draw events/s and the leaderboard sink's lag. A screenshot is kept in
``.artifacts/dashboard.png``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings

from .pipeline_helpers import env, streaming, wait_caught_up

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / ".artifacts"


@pytest.fixture
def dashboard(settings: Settings, tmp_path) -> Iterator[str]:
    log = (tmp_path / "dashboard.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "dashboard"],
        cwd=REPO_ROOT,
        env=env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = settings.dashboard.url
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
        try:
            if httpx.get(url + "healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the dashboard did not become healthy in 60 s"
        time.sleep(0.2)
    try:
        yield url
    finally:
        stop_group(proc, timeout=20)
        log.close()


def test_the_page_shows_a_committed_event_on_the_board(stack, settings: Settings, db, dashboard: str, tmp_path):
    content_id = str(uuid.uuid4())
    title = f"Dashboard probe {content_id[:8]}"
    with streaming(settings, tmp_path / "pipeline.log"):
        wait_caught_up(settings)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(dashboard)
                expect(page.locator("#conn")).to_have_text("live", timeout=30_000)
                row = page.locator(f'section.overall tr[data-content-id="{content_id}"]')
                expect(row).to_have_count(0)

                db.execute(
                    "INSERT INTO content VALUES (%s, %s, %s, 'podcast', 600, now())", (content_id, content_id, title)
                )
                db.execute(
                    "INSERT INTO engagement_events (content_id, event_type, event_ts, duration_ms, device) "
                    "VALUES (%s, 'play', now(), 2000000000, 'web')",
                    (content_id,),
                )
                expect(row.locator("td.title")).to_have_text(title, timeout=30_000)
                expect(row.locator("td.num")).to_have_text("2,000,000")
                podcast_row = page.locator(f'section.podcast tr[data-content-id="{content_id}"] td.title')
                expect(podcast_row).to_have_text(title)
                # The charts: events/s over the snapshots so far, and the leaderboard sink's lag, 0
                # once it has stored the event (the lags are read every 5 s).
                two_points = re.compile(r"^[\d.]+,[\d.]+( [\d.]+,[\d.]+)+$")
                expect(page.locator('#chart-rate polyline[data-series="events_per_s"]')).to_have_attribute(
                    "points", two_points, timeout=15_000
                )
                legend = page.locator('#lag-legend span[data-sink="redis_leaderboard"]')
                expect(legend).to_have_text("redis_leaderboard 0", timeout=15_000)
                expect(page.locator('#chart-lag polyline[data-series="redis_leaderboard"]')).to_have_count(1)
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            finally:
                browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
