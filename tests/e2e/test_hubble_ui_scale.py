"""The Hubble UI with 200 workloads, in a real browser: every workload gets a card, the map groups
them (auto: by the label key that splits them into a few groups, here ``tier``), the search box
narrows them, and the flows table keeps only the rows in view in the DOM however many it holds.

No lab: the relay is the benchmark's synthetic one (``bench/hubble_ui.py``: a real gRPC Observer
on a unix socket with the flows of 200 Deployments), ``ciliary hubble ui`` runs as a process on
it, Debian's headless Chromium through Playwright opens the page. The frame-time numbers are the
benchmark's (``make bench``, group ``hubble-ui``); this test checks what they are measured on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bench.hubble_ui import NAMESPACE, TIERS, WORKLOADS, SyntheticRelay, hubble_ui
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    with (
        SyntheticRelay(rate_per_min=1200) as relay,
        hubble_ui(relay.address) as (url, _),
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.goto(f"{url}?namespace={NAMESPACE}")
            yield pg
        finally:
            browser.close()


def _matches(page: Page, text: str) -> str:
    page.fill("#map-search", text)
    return page.evaluate("document.body.dataset.mapMatches")


def test_200_workloads_get_grouped_cards_and_the_search_narrows_them(page: Page) -> None:
    cards = WORKLOADS + 1  # and kube-dns, which they look up
    page.wait_for_function(f"hubbleUI.cy.nodes().not('.group').length === {cards}", timeout=15_000)
    assert page.evaluate("document.body.dataset.mapCards") == str(cards)
    assert page.evaluate("hubbleUI.map.groupKey") == "tier"
    groups = page.evaluate("hubbleUI.cy.nodes('.group').map(g => g.data('label'))")
    assert sorted(groups) == sorted(f"tier={t} ({WORKLOADS // len(TIERS)})" for t in TIERS)
    expect(page.locator("#map-count")).to_have_text(f"{cards} cards")

    assert _matches(page, "svc-42") == "1"
    expect(page.locator("#map-count")).to_have_text(f"1 of {cards} cards")
    assert page.evaluate("hubbleUI.cy.$id('bench/Deployment/svc-42').hasClass('match')")
    assert page.evaluate("hubbleUI.cy.$id('bench/Deployment/svc-43').hasClass('faded')")
    assert _matches(page, "tier=cache") == str(WORKLOADS // len(TIERS))
    assert _matches(page, "tier=cache 8003/tcp") == str(
        sum(1 for i in range(WORKLOADS) if i % len(TIERS) == 2 and _reached_on(i, 8003))
    )
    page.press("#map-search", "Escape")
    assert page.evaluate("document.body.dataset.mapMatches") == ""
    assert page.evaluate("hubbleUI.cy.nodes('.faded').length") == 0

    # grouping by hand: the namespace (bench, and kube-system's kube-dns)
    page.select_option("#map-group", "namespace")
    page.wait_for_function("hubbleUI.cy.nodes('.group').length === 2")


def _reached_on(i: int, port: int) -> bool:
    """Whether workload i is a peer that some workload opens ``port`` to (bench/hubble_ui.py:
    workload j connects to its peers on 8000 + j % 20)."""
    from bench.hubble_ui import peers_of  # noqa: PLC0415

    return any(i in peers_of(j) and 8000 + j % 20 == port for j in range(WORKLOADS))


def test_the_table_keeps_only_the_rows_in_view_in_the_dom(page: Page) -> None:
    page.wait_for_function("hubbleUI.state.rows.length >= 500", timeout=15_000)
    held = page.evaluate("hubbleUI.state.rows.length")
    in_dom = page.locator("#flows-body tr").count()
    assert 10 < in_dom < 60, (held, in_dom)
    # scrolled far down: the rows there are rendered (and the table pauses)
    page.evaluate("document.getElementById('table-wrap').scrollTop = 22 * 300")
    page.wait_for_function(
        "[...document.querySelectorAll('#flows-body tr')].some(tr => +tr.dataset.index >= 300)"
    )
    expect(page.locator("#paused")).to_be_visible(timeout=5_000)
    assert page.locator("#flows-body tr").count() < 60
