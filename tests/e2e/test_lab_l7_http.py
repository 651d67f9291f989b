"""HTTP rules in a lab (issue #15 Build 3): a client pod's egress CNP with an HTTP rule to the
web pod's port 80; the datapath hands the client's connections to the node's Envoy (started by
the agent once the rule applies), which answers a request the rule does not allow with Cilium's
``403 Access denied`` and forwards the others to the pod. The policy is applied before the pods
(``lab apply`` orders them so), so it is in force before the pods start.

The same lab shows Hubble's L7 side (#15 Build 5, 6): a second client pod, ``watcher``, has an
allow-all HTTP rule (``http: [{}]``: visibility without enforcement), so its requests all pass
and still become L7 flows and httpV2 metrics; ``ciliary observe`` filters them by type,
protocol, status, method and path, with upstream's grammar."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ciliary import processes
from ciliary.core.defaults import ENVOY_PIDFILE, ENVOY_STATE
from ciliary.lab import manager
from tests.kubectl import wait_for

from .conftest import CILIARY, Lab, shared_kube_lab
from .test_lab_databases import SHARES_LAB as DATABASES_LAB
from .test_lab_databases import write_lab

# test_lab_databases's one-node lab, shared (one lab up and down fewer a run; its file enables
# Hubble's flow and httpV2 metrics, L7_SPEC, for this module): this module's pods and policies
# are in a namespace of their own, which the policies' selectors cannot leave, applied with
# ``lab apply``, which also puts the policies in force before the pods start.
SHARES_LAB = DATABASES_LAB
NS = "l7http"

OWN = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: client}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: v1
kind: Pod
metadata: {{name: watcher, namespace: {ns}, labels: {{app: watcher}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "80"]
  - name: other
    command: [ciliary, workload, http-server, --port, "8080"]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-http, namespace: {ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: web}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/public(/.*)?"}}
    - ports: [{{port: "8080", protocol: TCP}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: watcher-visibility, namespace: {ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: watcher}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: web}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http: [{{}}]
"""


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[Lab]:
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as (name, nodes, _):
        path = tmp_path_factory.mktemp("l7http") / "own.yaml"
        path.write_text(OWN.format(ns=NS))
        yield Lab(name, nodes[0], manager.apply(path, name=name), path)


def _get(lab: Lab, url: str, status: int) -> str:
    """ "" when ``url`` answered ``status``, else what the client said."""
    res = lab.run(f"{NS}/client", "ciliary", "workload", "http-get", url,
                  "--expect-status", str(status))  # fmt: skip
    return res.stdout + res.stderr if res.returncode else ""


def test_get_public_200_private_403(lab: Lab) -> None:
    web = lab.pod_ip(f"{NS}/web")
    # the agent starts Envoy when the rule first applies (~0.5 s); until it listens the
    # datapath drops the redirected connection (fail closed)
    deadline = time.monotonic() + 20
    while (err := _get(lab, f"http://{web}/public", 200)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert err == "", err
    denied = lab.run(f"{NS}/client", "ciliary", "workload", "http-get", f"http://{web}/private",
                     "--expect-status", "403")  # fmt: skip
    assert "HTTP 403 15 bytes" in denied.stdout, denied  # "Access denied\r\n", Envoy's answer
    assert _get(lab, f"http://{web}/publicity", 403) == ""  # the path regex matches whole
    assert _get(lab, f"http://{web}:8080/private", 200) == ""  # no L7 rule: not redirected


_PATCH = """\
import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], method="PATCH", data=b"x")
try:
    print(urllib.request.urlopen(req, timeout=5).status)
except urllib.error.HTTPError as err:
    print(err.code)
"""


def _observe(lab: Lab, *flags: str) -> list[dict[str, Any]]:
    """The node's flows ``ciliary observe`` prints for ``flags`` (jsonpb)."""
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == lab.node)
    res = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock",
         "--last", "2000", "-o", "jsonpb", *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


def _http(flows: list[dict[str, Any]]) -> set[tuple[str, str, str, str, int]]:
    """(pod, kind, verdict, method path, code) of L7 HTTP flows; pod = the client's."""
    out = set()
    for f in flows:
        http, kind = f["l7"]["http"], f["l7"]["type"]
        client = f["source" if kind == "REQUEST" else "destination"].get("pod_name", "")
        path = "/" + http["url"].split("/", 3)[3]
        out.add((client, kind, f["verdict"], f"{http['method']} {path}", http.get("code", 0)))
    return out


def test_allow_all_http_rule_l7_flows_filters_and_metrics(lab: Lab) -> None:
    """``http: [{}]``: every request of the watcher passes (a PATCH the server does not
    implement gets the server's 501, not Envoy's 403) and each becomes request/response flows;
    the client's denied GET is ``http-request DROPPED`` then ``http-response 403``; the
    filters select exactly their flows; httpV2 counts them by workload."""
    web = lab.pod_ip(f"{NS}/web")
    deadline = time.monotonic() + 20  # Envoy may still be starting (see the test above)
    while (err := _get(lab, f"http://{web}/public", 200)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert err == "", err
    assert _get(lab, f"http://{web}/private", 403) == ""  # the client's rule denies it
    watched = lab.run(f"{NS}/watcher", "ciliary", "workload", "http-get",
                      f"http://{web}/private", "--expect-status", "200")  # fmt: skip
    assert watched.returncode == 0, watched  # allow-all: nothing denied
    patch = lab.run(f"{NS}/watcher", sys.executable, "-c", _PATCH, f"http://{web}/private/x")
    assert patch.stdout.strip() == "501", patch  # the server's answer, through Envoy

    want_watcher = {
        ("watcher", "REQUEST", "FORWARDED", "GET /private", 0),
        ("watcher", "RESPONSE", "FORWARDED", "GET /private", 200),
        ("watcher", "REQUEST", "FORWARDED", "PATCH /private/x", 0),
        ("watcher", "RESPONSE", "FORWARDED", "PATCH /private/x", 501),
    }
    got = wait_for(
        "the watcher's L7 flows",
        lambda: (
            (f := _http(_observe(lab, "--type", "l7", "--pod", f"{NS}/watcher"))) >= want_watcher
            and f
        ),
        20,
    )
    assert got == want_watcher  # nothing of the client's, no DROPPED
    every = _http(_observe(lab, "--type", "l7"))
    denied = {("client", "REQUEST", "DROPPED", "GET /private", 0),
              ("client", "RESPONSE", "FORWARDED", "GET /private", 403)}  # fmt: skip
    assert denied <= every and want_watcher <= every
    assert _http(_observe(lab, "--protocol", "http")) == every  # every L7 flow here is HTTP
    forbidden = _http(_observe(lab, "--http-status", "403"))
    assert ("client", "RESPONSE", "FORWARDED", "GET /private", 403) in forbidden
    assert {(*h[:2], h[4]) for h in forbidden} == {("client", "RESPONSE", 403)}
    assert _http(_observe(lab, "--http-status", "5+")) == {
        ("watcher", "RESPONSE", "FORWARDED", "PATCH /private/x", 501)
    }
    assert {h[3] for h in _http(_observe(lab, "--http-method", "patch"))} == {"PATCH /private/x"}
    assert {h[3] for h in _http(_observe(lab, "--http-path", "^/priv"))} == {
        "GET /private",
        "PATCH /private/x",
    }
    assert _observe(lab, "--protocol", "dns") == []  # no DNS rule in this lab
    # upstream's compact lines for the denied request and Envoy's answer (a reply: <-)
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == lab.node)
    compact = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock", "--last",
         "2000", "--type", "l7", "--pod", f"{NS}/client",
         "--http-path", "^/private$"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    url = f"http://{web}/private"
    assert re.search(
        rf"{NS}/client:\d+ \(ID:\d+\) -> {NS}/web:80 \(ID:\d+\) "
        rf"http-request DROPPED \(HTTP/1\.1 GET {re.escape(url)}\)$",
        compact,
        re.M,
    ), compact
    assert re.search(
        rf"{NS}/client:\d+ \(ID:\d+\) <- {NS}/web:80 \(ID:\d+\) "
        rf"http-response FORWARDED \(HTTP/1\.1 403 \d+ms \(GET {re.escape(url)}\)\)$",
        compact, re.M,
    ), compact  # fmt: skip

    def scrape() -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", manager.node_netns(lab.name, lab.node), sys.executable,
             "-c", "import urllib.request as u; "
             "print(u.urlopen('http://127.0.0.1:9965/metrics', timeout=5).read().decode())"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return res.stdout

    def requests() -> dict[tuple[str, str], float]:
        """(method, status) → hubble_http_requests_total of the egress (client) side."""
        out = {}
        for family in text_string_to_metric_families(scrape()):
            for smp in family.samples:
                if smp.name == "hubble_http_requests_total":
                    lab_ = smp.labels
                    assert lab_["source_namespace"] == lab_["destination_namespace"] == NS
                    assert (lab_["reporter"], lab_["traffic_direction"]) == ("client", "egress")
                    out[lab_["method"], lab_["status"]] = smp.value
        return out

    def patched() -> dict[tuple[str, str], float] | None:
        got = requests()
        return got if ("PATCH", "501") in got else None

    counted = wait_for("httpV2 counts the watcher's PATCH", patched, 20)
    assert counted[("PATCH", "501")] == 1
    assert counted[("GET", "403")] >= 1  # the client's denied requests (both tests')
    assert counted[("GET", "200")] >= 2  # the client's public ones, the watcher's private one


_REUSE = """\
import socket, sys, time
web, rounds, first, count = sys.argv[1], *map(int, sys.argv[2:5])
def syn_retransmits():
    lines = open("/proc/net/netstat").read().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], values.split()[1:]))["TCPSynRetrans"])
before, slow = syn_retransmits(), []
for r in range(rounds):
    for port in range(first, first + count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
        began = time.monotonic()
        s.connect((web, 80))
        took = time.monotonic() - began
        s.sendall(b"GET /public HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        s.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        if took > 0.2:
            slow.append((r, port, round(took, 3)))
print(syn_retransmits() - before, slow)
"""


def test_reused_client_ports_connect_without_syn_retransmission(lab: Lab) -> None:
    """A client reconnecting from the same few ports while Envoy holds the earlier
    connections of those tuples in TIME_WAIT (it closes first after ``Connection: close``):
    each new SYN reaches Envoy's listener at once (bpf_sk_lookup.c), as with a normal stack.
    Before, the SYN was assigned to the TIME_WAIT socket, whose old ACK made the client reset
    and retransmit; assigned to the listener instead it was dropped (the 1 s retransmission)."""
    web = lab.pod_ip(f"{NS}/web")
    deadline = time.monotonic() + 20  # Envoy may still be starting (see the first test)
    while (err := _get(lab, f"http://{web}/public", 200)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert err == "", err
    res = lab.run(f"{NS}/client", sys.executable, "-c", _REUSE, web, "8", "41000", "4")
    assert res.returncode == 0, res
    assert res.stdout.split(maxsplit=1) == ["0", "[]\n"], res.stdout  # SYN retransmits, slow


_KEEP_ALIVE = """\
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=10)
def get(path):
    s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n".encode())
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "connection closed"
        head += chunk
    head, _, body = head.partition(b"\\r\\n\\r\\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\\r\\n")
                      if l.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(4096)
    return head.split()[1].decode()
print(get("/public/before"), flush=True)
sys.stdin.readline()  # the agent restarts meanwhile
print(get("/public/kept"), get("/private/kept"), s.getsockname()[1], flush=True)
"""


def _envoy_pid(lab: Lab) -> tuple[int, int]:
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == lab.node)
    found = processes.recorded(Path(nrec.state_dir) / ENVOY_STATE / ENVOY_PIDFILE)
    assert found is not None and found[1] is not None and processes.alive(*found), found
    return found[0], found[1]


def test_agent_restart_keeps_proxied_connections(lab: Lab) -> None:
    """Issue #15 Must hold: Envoy outlives the agent's restart (the next agent adopts it), so a
    keep-alive connection through it goes on: its next requests are still decided (200, 403);
    a new connection works and Envoy's access log still reaches Hubble as L7 flows."""
    web = lab.pod_ip(f"{NS}/web")
    deadline = time.monotonic() + 20  # Envoy may still be starting (see the first test)
    while (err := _get(lab, f"http://{web}/public", 200)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert err == "", err
    pod = manager.find_pod(manager.record(lab.name), f"{NS}/client")
    client = subprocess.Popen(
        ["ip", "netns", "exec", pod.netns, sys.executable, "-c", _KEEP_ALIVE, web],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "200", client.stderr
        envoy = _envoy_pid(lab)
        manager.restart_agent(lab.node, name=lab.name)
        out, err = client.communicate("go\n", timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    assert out.split()[:2] == ["200", "403"], (out, err)  # the same connection, still decided
    assert _envoy_pid(lab) == envoy  # adopted, not restarted
    assert _get(lab, f"http://{web}/public/new", 200) == ""  # a new connection
    assert _get(lab, f"http://{web}/private/new", 403) == ""
    port = int(out.split()[2])
    want = {
        ("client", "REQUEST", "FORWARDED", "GET /public/kept", 0),
        ("client", "RESPONSE", "FORWARDED", "GET /public/kept", 200),
        ("client", "REQUEST", "DROPPED", "GET /private/kept", 0),
        ("client", "RESPONSE", "FORWARDED", "GET /private/kept", 403),
        ("client", "REQUEST", "FORWARDED", "GET /public/new", 0),
        ("client", "REQUEST", "DROPPED", "GET /private/new", 0),
    }
    got = wait_for(
        "L7 flows after the restart",
        lambda: (f := _http(_observe(lab, "--type", "l7", "--pod", f"{NS}/client"))) >= want and f,
        20,
    )
    assert want <= got
    kept = [f for f in _observe(lab, "--type", "l7", "--http-path", "^/public/kept$")
            if f["l7"]["type"] == "REQUEST"]  # fmt: skip
    assert [f["l4"]["TCP"]["source_port"] for f in kept] == [port]  # the connection of before
