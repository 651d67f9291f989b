"""The Hubble UI in a real browser against a real lab: Debian's headless Chromium driven by
Playwright for Python (``/usr/bin/chromium``, nothing downloaded), ``ciliary hubble ui`` as a
process reading the lab's relay, and pod traffic allowed and dropped by real policies in the
kernel.

One node, the demo's shape: ``default/client``; ``shop/web`` (HTTP on 80, reached by the client
under ``web-from-client``) and ``shop/db`` (echo on 5432, only ``web`` may reach it:
``db-from-web``, so the client's connection is a default-deny drop). The map must show client →
web forwarded and client → db dropped; fresh traffic must reach the table within 2 s; a filter
narrows it; clicking a dropped flow names ``db-from-web``. Screenshots (the map; the whole page,
map and table; the side panel of a drop) go to the test's tmp dir; with
``CILIARY_UPDATE_DOCS_IMAGES=1`` they are also copied to ``docs/images/hubble-ui*.png`` (the README
and docs/hubble-ui.md show them), so a plain test run leaves the tree as it was.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ciliary import processes
from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, REPO, assert_no_leftovers, unique

CHROMIUM = "/usr/bin/chromium"
DOCS_IMAGES = REPO / "docs" / "images"

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes:
  - name: {node}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop, labels: {{app: web, tier: front}}}}
spec:
  containers: [{{name: web, command: [ciliary, workload, http-server, --port, "80"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: shop, labels: {{app: db}}}}
spec:
  containers: [{{name: db, command: [ciliary, workload, echo-server, --tcp-port, "5432"]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web-from-client, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromEndpoints:
    - matchLabels: {{app: client, k8s:io.kubernetes.pod.namespace: default}}
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: db-from-web, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: db}}}}
  ingress:
  - fromEndpoints:
    - matchLabels: {{app: web}}
    toPorts:
    - ports: [{{port: "5432", protocol: TCP}}]
"""


@dataclass
class UILab:
    name: str
    url: str
    web_ip: str
    db_ip: str
    page: Page
    shots: Path

    def traffic(self) -> None:
        """client → web (allowed), client → db (dropped)."""
        ok = manager.run_in_pod(
            "default/client",
            ["ciliary", "workload", "http-get", f"http://{self.web_ip}/"],
            name=self.name,
        )
        assert ok.returncode == 0, ok.stderr
        denied = manager.run_in_pod(
            "default/client",
            ["ciliary", "workload", "tcp-echo", "--timeout", "0.5", self.db_ip, "5432"],
            name=self.name,
        )
        assert denied.returncode != 0, denied.stdout

    def shot(self, selector: str, name: str) -> None:
        path = self.shots / name
        self.page.locator(selector).screenshot(path=path)
        if os.environ.get("CILIARY_UPDATE_DOCS_IMAGES") == "1":
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_IMAGES / name)

    def rows(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = self.page.eval_on_selector_all(
            "#flows-body tr",
            "trs => trs.map(tr => ({verdict: tr.dataset.verdict,"
            " source: tr.querySelector('[data-col=source]').textContent,"
            " destination: tr.querySelector('[data-col=destination]').textContent}))",
        )
        return rows

    def set_filter(self, text: str) -> None:
        self.page.fill("#filter", text)
        self.page.press("#filter", "Enter")


def _ui_url(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The URL ``ciliary hubble ui`` prints once it listens."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("Hubble UI at "):
                return line.split()[3]
        assert proc.poll() is None, f"hubble ui exited: {proc.stderr.read() if proc.stderr else ''}"
    raise AssertionError("hubble ui printed no URL")


@dataclass
class Lab:
    name: str
    url: str
    web_ip: str
    db_ip: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab and ``ciliary hubble ui`` on its relay (made before Playwright starts: its sync
    API runs an event loop in this thread, which pyroute2's IPRoute cannot share)."""
    name, node = unique("ui"), unique("n")
    path = tmp_path_factory.mktemp("hubble-ui-lab") / "lab.yaml"
    path.write_text(LAB.format(lab=name, node=node))
    proc: subprocess.Popen[str] | None = None
    try:
        view = manager.up(path)
        assert view.relay is not None and view.relay.alive
        ips = {p.name: p.ipv4 for p in view.pods}
        web_ip, db_ip = ips["web"], ips["db"]
        assert web_ip and db_ip
        proc = subprocess.Popen(
            [CILIARY, "hubble", "ui", "--relay", view.relay.address, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        yield Lab(name, _ui_url(proc), web_ip, db_ip)
    finally:
        if proc is not None:
            proc.terminate()
            proc.communicate(timeout=10)  # waits, and closes the pipes
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [node])


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def ui(lab: Lab, browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UILab]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    shots = tmp_path_factory.mktemp("hubble-ui-screenshots")
    ui = UILab(lab.name, lab.url, lab.web_ip, lab.db_ip, page, shots)
    ui.traffic()
    page.goto(f"{lab.url}?namespace=shop")
    yield ui
    page.close()


def test_map_shows_client_to_web_forwarded_and_client_to_db_dropped(ui: UILab) -> None:
    page = ui.page
    expect(page.locator("#namespace")).to_have_value("shop")
    web = page.locator("#map-list li[data-source=client][data-destination=web]")
    db = page.locator("#map-list li[data-source=client][data-destination=db]")
    expect(web).to_have_attribute("data-verdict", "forwarded", timeout=10_000)
    expect(db).to_have_attribute("data-verdict", "dropped", timeout=10_000)
    expect(web).to_contain_text("TCP/80 forwarded")
    expect(db).to_contain_text("TCP/5432 dropped")
    # the drawn map has the same cards and edges (cytoscape's model), the cards their ports
    cards = page.evaluate("hubbleUI.cy.nodes().map(n => n.data('label'))")
    assert any(c.startswith("web\nPod\n") and "ports: 80/TCP" in c for c in cards), cards
    assert any(c.startswith("client\nPod · default") for c in cards), cards
    page.wait_for_timeout(300)  # the layout's last frame
    ui.shot("#map-section", "hubble-ui-map.png")


def test_table_receives_new_flows_within_2s(ui: UILab) -> None:
    page = ui.page
    page.wait_for_function("hubbleUI.state.rows.length > 0", timeout=10_000)
    start_ms = time.time() * 1000
    ui.traffic()
    done = time.monotonic()
    page.wait_for_function(
        "t => hubbleUI.state.rows.some(r => r.source === 'default/client'"
        " && r.destination === 'shop/db' && Date.parse(r.time) >= t)",
        arg=start_ms - 50,
        timeout=2_000,
    )
    took = time.monotonic() - done
    assert took < 2.0, took
    print(f"fresh flow in the table {took * 1000:.0f} ms after the traffic")
    ui.shot("body", "hubble-ui.png")  # the whole page: map and table
    # the verdict is written, not only colored
    expect(page.locator("#flows-body tr[data-verdict=DROPPED] td.verdict").first).to_have_text(
        "DROPPED"
    )


def test_filter_narrows_the_table_and_names_bad_flags(ui: UILab) -> None:
    page = ui.page
    page.wait_for_function("hubbleUI.state.rows.some(r => r.verdict === 'FORWARDED')")
    ui.set_filter("--verdict DROPPED")
    page.wait_for_function(
        "document.querySelectorAll('#flows-body tr').length > 0 && "
        "[...document.querySelectorAll('#flows-body tr')]"
        ".every(tr => tr.dataset.verdict === 'DROPPED')",
        timeout=10_000,
    )
    rows = ui.rows()
    assert rows and {r["verdict"] for r in rows} == {"DROPPED"}
    assert {(r["source"], r["destination"]) for r in rows} == {("default/client", "shop/db")}
    assert "filter=--verdict+DROPPED" in page.url
    ui.set_filter("--verdict MAYBE")
    expect(page.locator("#filter-error")).to_contain_text(
        'invalid argument "MAYBE" for "--verdict"'
    )


def test_dropped_flow_panel_names_the_deciding_policy(ui: UILab) -> None:
    page = ui.page
    ui.set_filter("--to-pod shop/db --verdict DROPPED")
    first = page.locator("#flows-body tr").first
    expect(first).to_have_attribute("data-verdict", "DROPPED", timeout=10_000)
    # keyboard only: the table's one tab stop, arrows, Enter
    page.focus('#flows-body tr[tabindex="0"]')
    page.keyboard.press("End")
    page.keyboard.press("Home")
    page.keyboard.press("Enter")
    panel = page.locator("#panel")
    expect(panel).to_be_visible()
    why = page.locator("#panel-why")
    expect(why).to_contain_text("Default deny by: CiliumNetworkPolicy shop/db-from-web")
    expect(why).to_contain_text("no rule of it allows this peer/port")
    expect(page.locator("#panel-json")).to_contain_text('"pod_name": "db"')
    ui.shot("body", "hubble-ui-flow-panel.png")
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    # an allowed flow names the rule that allowed it
    ui.set_filter("--to-pod shop/web --verdict FORWARDED --type policy-verdict")
    expect(page.locator("#flows-body tr").first).to_have_attribute(
        "data-verdict", "FORWARDED", timeout=10_000
    )
    page.locator("#flows-body tr").first.click()
    expect(why).to_contain_text("Allowed at ingress by: CiliumNetworkPolicy shop/web-from-client")
    # "filter by this": the source becomes a filter flag
    page.click("#panel [data-filter=source]")
    expect(page.locator("#filter")).to_have_value(
        "--to-pod shop/web --verdict FORWARDED --type policy-verdict --from-pod default/client"
    )
    expect(page.locator("#flows-body tr").first).to_have_attribute(
        "data-verdict", "FORWARDED", timeout=10_000
    )


def test_table_pauses_while_scrolled_away_from_the_top(ui: UILab) -> None:
    page = ui.page
    page.set_viewport_size({"width": 1280, "height": 480})  # a table of ~8 rows
    ui.set_filter("")
    wrap = "document.getElementById('table-wrap')"
    page.wait_for_function(f"{wrap}.scrollHeight > {wrap}.clientHeight + 40", timeout=10_000)
    page.evaluate(f"{wrap}.scrollTop = 40")
    held = page.evaluate("hubbleUI.state.rows.length")  # the DOM has only the rows in view
    top = page.locator("#flows-body tr").first.get_attribute("data-id")
    ui.traffic()
    paused = page.locator("#paused")
    expect(paused).to_be_visible()
    expect(paused).to_contain_text("new flows")
    assert page.evaluate("hubbleUI.state.rows.length") == held
    assert page.locator("#flows-body tr").first.get_attribute("data-id") == top
    page.evaluate(f"{wrap}.scrollTop = 0")
    expect(paused).to_be_hidden()
    assert page.evaluate("hubbleUI.state.rows.length") > held
    expect(page.locator("#flows-body tr").first).not_to_have_attribute("data-id", top or "")


def test_policy_view_and_what_if_name_the_deciding_rule(ui: UILab) -> None:
    """db's panel: web may reach it on 5432 (db-from-web), and the what-if of client → db:5432
    is the default deny db-from-web puts it in; web → db:5432 is allowed by it."""
    page = ui.page
    page.select_option("#policy-of", "shop/Pod/db")
    allowed = page.locator("#wpanel-ingress li[data-port='5432/TCP'][data-verdict=allowed]")
    expect(allowed).to_contain_text("shop/web", timeout=10_000)
    expect(allowed).to_contain_text("by CiliumNetworkPolicy shop/db-from-web")
    expect(page.locator("#wpanel-ingress .policy-state")).to_contain_text(
        "enforced (default deny) by CiliumNetworkPolicy shop/db-from-web"
    )
    expect(page.locator("#wpanel-egress .policy-state")).to_contain_text("not enforced")
    result = page.locator("#whatif-result")
    page.select_option("#whatif-from", "default/Pod/client")
    page.fill("#whatif-port", "5432")
    page.click("#whatif button[type=submit]")
    expect(result).to_have_attribute("data-allowed", "false")
    expect(result).to_contain_text("DENIED — default deny: shop/db is selected for ingress by")
    expect(result).to_contain_text("CiliumNetworkPolicy shop/db-from-web")
    ui.shot("body", "hubble-ui-policy.png")
    page.select_option("#whatif-from", "shop/Pod/web")
    page.click("#whatif button[type=submit]")
    expect(result).to_have_attribute("data-allowed", "true")
    expect(result).to_contain_text("allowed at ingress by CiliumNetworkPolicy shop/db-from-web")
    page.keyboard.press("Escape")
    expect(page.locator("#wpanel")).to_be_hidden()


def test_the_lab_serves_the_ui_until_lab_down(lab: Lab) -> None:
    """What ``make demo`` does: the UI as a process of the lab (the supervisor's, recorded), its
    URL answering, and ``lab down`` stopping it by its pid. Last: it takes the module's lab down
    (the fixture then finds nothing left)."""
    url = manager.start_hubble_ui(lab.name, port=0)
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and b"cytoscape.min.js" in resp.read()
    with urllib.request.urlopen(url + "api/namespaces", timeout=10) as resp:
        assert "shop" in json.loads(resp.read())["namespaces"]
    ui = manager.record(lab.name).processes[manager.HUBBLE_UI]
    assert ui.pid is not None and processes.alive(ui.pid, ui.start_time)
    assert ui.argv[-2:] == ["--port", "0"] and "--relay" in ui.argv
    manager.down(lab.name)
    assert not processes.alive(ui.pid, ui.start_time)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
