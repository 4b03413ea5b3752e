"""The Dagster UI renders our code location: the asset graph with its groups and one asset's page,
in headless Debian Chromium driven by Playwright, against the real webserver of
tests/dagster_processes.py (after at least one export was ingested and published, so the
pages show materializations).

Screenshots go to the test's temp directory; with ``UPDATE_SCREENSHOTS=1`` (or when missing)
they are also written to docs/screenshots/ for the README, so an ordinary test run does not
rewrite committed images.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# tests.dagster_processes is loaded as a plugin, so that its session fixture (one webserver
# + daemon per xdist worker) is shared by both test files; registered for assertion
# rewriting before the import below, as pytest would do for a plugin it imports itself
pytest.register_assert_rewrite("tests.dagster_processes")
pytest_plugins = ["tests.dagster_processes"]

from tests.dagster_processes import (  # noqa: E402 - after the registration above
    REPO,
    DagsterStack,
    ensure_published,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "docs" / "screenshots"
GROUPS = ["ingest", "validation", "outcomes", "marts", "reports"]
# asset labels that are not truncated in graph nodes, spread over the whole graph
GRAPH_ASSETS = ["landing_exports", "treatments", "patient_outcomes", "attrition",
                "response_rates", "time_to_response", "outcomes_report"]
VIEWPORT = {"width": 1280, "height": 860}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
                    "(apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, dagster_stack: DagsterStack) -> Iterator[Any]:
    ensure_published(dagster_stack)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def _save(page: Any, name: str, tmp_path: Path) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000, "screenshot looks blank"
    target = SCREENSHOTS / name
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not target.exists():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return shot


def _outside(page: Any, labels: list[str], area: dict[str, float]) -> list[str]:
    """Labels whose graph node is not rendered inside ``area`` (the canvas holds the last
    occurrence of each label, the asset tree beside it the first; nodes out of view are not
    rendered at all). A label starting with "…" matches the one name the UI truncates."""
    missing = []
    for label in labels:
        loc = page.get_by_text(label, exact=not label.startswith("…")).last
        box = loc.bounding_box(timeout=2_000) if loc.count() else None
        if (box is None or box["x"] < area["left"] or box["y"] < area["top"]
                or box["x"] + box["width"] > area["right"]
                or box["y"] + box["height"] > area["bottom"]):
            missing.append(label)
    return missing


def _fit_graph(page: Any, labels: list[str], area: dict[str, float]) -> list[str]:
    """Show the whole graph: double-click on empty canvas is the UI's "autocenter" (it fits the
    width; our marts group is taller), then zoom out around the centre until every label is
    inside ``area``. Returns the labels still outside."""
    page.mouse.dblclick(area["left"] + 15, area["bottom"] - 15)
    page.wait_for_timeout(800)
    for _ in range(10):
        missing = _outside(page, labels, area)
        if not missing:
            break
        # the zoom-out button zooms around the centre without hovering a node (a hovered
        # node leaves its tooltip in the screenshot)
        page.locator("[aria-label=zoom_out]").click()
        page.wait_for_timeout(500)
    return _outside(page, labels, area)


def test_asset_graph_renders_groups_and_assets(page: Any, dagster_stack: DagsterStack,
                                               tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expanded = ",".join(f"global@global:{g}" for g in GROUPS)
    page.goto(f"{dagster_stack.url}/asset-groups?expanded={urllib.parse.quote(expanded)}",
              wait_until="networkidle")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    for label in ["landing_exports", "patient_outcomes", "ingest", "outcomes"]:
        expect(page.get_by_text(label, exact=True).last).to_be_visible()
    # more room for the graph: collapse the navigation and the asset tree beside the graph
    page.get_by_text("Hide navigation").click()
    jump = page.get_by_placeholder("Jump to…").bounding_box()
    page.mouse.click(jump["x"] + jump["width"] + 20, jump["y"] + jump["height"] / 2)
    page.wait_for_timeout(500)
    toolbar = page.get_by_text("Materialize all…").bounding_box()
    area = {"left": 90, "top": toolbar["y"] + toolbar["height"] + 20,
            "right": VIEWPORT["width"] - 60, "bottom": VIEWPORT["height"] - 10}
    outline = [*GRAPH_ASSETS, *GROUPS, "…_curve"]  # time_to_res…_curve: the lowest node
    assert not _fit_graph(page, outline, area)
    _save(page, "asset-graph.png", tmp_path)


def test_asset_page_shows_group_jobs_sensor_and_schedule(page: Any, dagster_stack: DagsterStack,
                                                        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(f"{dagster_stack.url}/assets/patient_outcomes", wait_until="networkidle")
    expect(page.get_by_text("patient_outcomes", exact=True).first).to_be_visible()
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    for text in ["outcomes", "publish_marts_job", "publish_after_ingest_sensor",
                 "per_indication"]:
        expect(page.get_by_text(text, exact=True).first).to_be_visible()
    expect(page.get_by_text("At 05:00 AM UTC")).to_be_visible()  # daily_rebuild_schedule
    _save(page, "asset-page.png", tmp_path)
