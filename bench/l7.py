"""Group ``l7``: what ciliary's L7 path costs a pod's HTTP requests, and what the DNS proxy adds
to its DNS queries (issue #15's bench point). Targets: b/c ≥ 0.9 (our redirect and policy add
at most 10 % over Envoy itself), the DNS proxy's p50 added ≤ 1 ms; reported, never asserted.

One one-node lab (names from ``bench.common.tag``, so ``bench.run`` sweeps a killed run's lab):
pods ``client-0``, ``server-0`` and ``proxy-0``; nginx in the server pod (one worker, ``return
200``, ports 80 and 8081); the client's egress CNP allows port 80 of the server with an HTTP rule
(GET /), port 8081 of the server and port 10000 of the proxy pod at L4. Setups, the same two pods
and server, measured back to back in every round (``datapath.interleave``):

  a: direct            client → server:8081, no L7 rule: the datapath alone;
  b: ciliary L7        client → server:80: the datapath hands the connection to the node's Envoy
                       (``bpf_sk_assign``), whose filter chain applies the rule (RBAC), writes
                       its access log line (the agent turns it into Hubble L7 records) and
                       connects to the server as the pod (original_src, the proxy mark);
  c: standalone Envoy  client → proxy-0:10000: the same Envoy binary with the same flags
                       (``--concurrency 1``) in the proxy pod as a plain reverse proxy (an HTTP
                       connection manager, codec AUTO, the router, a static cluster of
                       server:8081; no RBAC, no access log, no original_src), started in a
                       session of its own as the agent starts b's: what a proxy costs.

Then, in the same lab, b and c again in one run each round (``alternating``: ``httpload -ka`` /
``-ca``, one client process whose requests alternate between b's and c's server, each side's
requests over the time they took): load that changes within seconds on this shared two-core
machine falls on both alike, where runs one after the other each meet their own (c's own rounds
moved 2x within a minute). Its rows give the medians and each round's own b/c (median, lowest,
highest).

b/c is the cost of our redirect, policy and access log over Envoy itself. Load: ``httpload``
(``bench/httpload.c``, one GET in flight, 2-byte body) on one keep-alive connection and with a
new connection per request; requests/s and p50/p99 per request, failed requests and the
client's SYN retransmissions (b's SYNs can meet Envoy's TIME_WAIT sockets, docs/benchmarks.md).
The DNS rows: in the lab, the client pod asks DNS servers in the server pod (``bench.dnsproxy``'s
client, one UDP query in flight), on port 53 through the node agent's DNS proxy (a ``rules: dns``
rule: the datapath redirects to the agent) and on 5353 direct (an L3/L4 rule); then the DNS
proxy's own bench (``bench/dnsproxy.py``: the proxy alone behind iptables TPROXY in scratch
namespaces).

    sudo .venv/bin/python -m bench.run --only l7
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import dnsproxy, tools
from bench.common import median, tag
from bench.datapath import Metric, Samples, Target, _quiesce, interleave
from ciliary.agent.envoy import envoy_binary
from ciliary.agent.envoyconfig import ACCESS_LOG_FIELDS, ACCESS_LOG_SEPARATOR
from ciliary.lab import manager

GROUP = "l7"
L7_PORT, DIRECT_PORT, PROXY_PORT = 80, 8081, 10000
DNS_PORT, DNS_DIRECT_PORT = 53, 5353
"""The server pod's DNS servers: 53 through the agent's DNS proxy (a ``rules: dns`` rule), 5353
direct (an L3/L4 rule); ``bench.dnsproxy``'s client asks both."""
PATH = "/"  # what the rule allows (GET, full match)
DIRECT, L7, ENVOY = "a: direct", "b: ciliary L7 (egress HTTP rule)", "c: standalone Envoy"
SETUPS = (DIRECT, L7, ENVOY)
BASELINE = ENVOY  # the ratio column of each row is x / c: b's is the target b/c
TARGET_B_C = 0.9
METRICS = ("keepalive", "close")
READY_S = 30.0
LAB_DNS = ", in the lab (the agent's proxy)"
"""What the lab's DNS rows add to their names (the scratch namespaces' rows have none)."""
ACCESS_LOG_CLIENT, ACCESS_LOG_SERVER = "10.200.0.10", "10.200.0.20"
"""The hubble bench decoder's two endpoints (``bench.hubble_bench._decoder``)."""
L7_METRICS = (
    "httpV2:labelsContext=source_namespace,source_workload,destination_namespace,"
    "destination_workload,traffic_direction"
)
"""Hubble's httpV2 metric as the L7 dashboard reads it (examples/grafana, the README)."""

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes: [{{name: {node}}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bench-l7, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: bench-client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: bench-server}}}}]
    toPorts:
    - ports: [{{port: "{l7}", protocol: TCP}}]
      rules:
        http: [{{method: GET, path: "{path}"}}]
    - ports: [{{port: "{direct}", protocol: TCP}}]
    - ports: [{{port: "53", protocol: ANY}}]
      rules:
        dns: [{{matchPattern: "*.example.com"}}]
    - ports: [{{port: "{dns_direct}", protocol: ANY}}]
  - toEndpoints: [{{matchLabels: {{app: bench-proxy}}}}]
    toPorts: [{{ports: [{{port: "{proxy}", protocol: TCP}}]}}]
"""
POD = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {role}-0, labels: {{app: bench-{role}}}}}
spec:
  nodeName: {node}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
"""


def lab_file(lab: str, node: str) -> str:
    text = LAB.format(lab=lab, node=node, l7=L7_PORT, direct=DIRECT_PORT, proxy=PROXY_PORT,
                      path=PATH, dns_direct=DNS_DIRECT_PORT)  # fmt: skip
    return text + "".join(POD.format(role=r, node=node) for r in ("client", "server", "proxy"))


NGINX = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  default_type text/plain;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen {l7};
    listen {direct};
    location / {{ return 200 "ok"; }}
  }}
}}
"""


def standalone_envoy(server_ip: str, admin: Path) -> dict[str, Any]:
    """The c setup's bootstrap: a plain reverse proxy on PROXY_PORT to the server's DIRECT_PORT,
    the node Envoy's connection manager (codec AUTO, the router) without RBAC and access log."""
    t = "type.googleapis.com/"
    hcm = {
        "@type": t
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [{
                "name": "bench", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"},
                            "route": {"cluster": "server", "timeout": "0s"}}],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": t + "envoy.extensions.filters.http.router.v3.Router"},
        }],
    }  # fmt: skip
    return {
        "admin": {"address": {"pipe": {"path": str(admin), "mode": 0o600}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": PROXY_PORT}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm,
                }]}],
            }],
            "clusters": [{
                "name": "server", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "server", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": server_ip, "port_value": DIRECT_PORT}}},
                }]}]},
            }],
        },
    }  # fmt: skip


@contextlib.contextmanager
def _process(argv: list[str], netns: str, ports: tuple[int, ...], log: Path, *,
             own_session: bool = False) -> Iterator[None]:  # fmt: skip
    """``argv`` in ``netns`` until the block ends (stopped by pid), once it listens on ``ports``;
    ``own_session``: in a session of its own (see ``l7_lab``)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*tools.enter(netns), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )
    try:
        deadline = time.monotonic() + READY_S
        while not tools.listening(netns, ports):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} did not listen on {ports}: {log.read_text()[-400:]}")
            time.sleep(0.05)
        yield
    finally:
        tools.stop(proc)


def _curl(enter: list[str], url: str) -> tuple[int, str, str]:
    """(status, server header, body) of one GET from the client pod; status 0: no answer."""
    res = subprocess.run(
        [*enter, "curl", "-s", "-m", "2", "-D", "-", url],
        capture_output=True,
        check=False,
        timeout=10,
    )  # fmt: skip  (bytes: text mode would turn the CRLFs into newlines)
    head, _, body = res.stdout.decode(errors="replace").partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    server = next((v.strip() for h, _, v in (x.partition(":") for x in lines[1:])
                   if h.lower() == "server"), "")  # fmt: skip
    return status, server, body


def check_paths(enter: list[str], urls: dict[str, str]) -> None:
    """Each setup answers through the path it is named for: a from nginx itself, b and c from an
    Envoy; b's rule is in force (a path it does not allow gets Cilium's 403). Waits for the
    node's Envoy (the agent starts it when the rule first applies)."""
    deadline = time.monotonic() + READY_S
    while (got := _curl(enter, urls[L7]))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    want = {DIRECT: "nginx", L7: "envoy", ENVOY: "envoy"}
    for setup, url in urls.items():
        got = _curl(enter, url)
        if got[0] != 200 or not got[1].startswith(want[setup]) or got[2] != "ok":
            raise RuntimeError(
                f"{setup}: GET {url} answered {got}, expected 200 from {want[setup]}"
            )
    denied = _curl(enter, urls[L7] + "denied")
    if denied[0] != 403 or denied[2] != "Access denied\r\n":
        raise RuntimeError(f"{L7}: GET /denied answered {denied}, expected Cilium's 403")


@contextlib.contextmanager
def l7_lab(tmp: Path) -> Iterator[tuple[list[Target], dict[str, int], int]]:
    """The lab, nginx and the standalone Envoy: (targets a, b, c), their ports, the agent's pid."""
    t = tag()
    node = f"{t}a"
    path = tmp / "lab.yaml"
    path.write_text(lab_file(t, node))
    view = manager.up(path)  # a failed `up` removes what it made
    try:
        rec = manager.record(t)
        agent = rec.nodes[0].agent_pid
        assert agent is not None
        netns = {p.name: p.netns for p in rec.pods}
        ips = {p.name: (p.ipv4 or "").partition("/")[0] for p in view.pods}
        (tmp / "nginx.conf").write_text(NGINX.format(tmp=tmp, l7=L7_PORT, direct=DIRECT_PORT))
        records = tmp / "records.json"
        records.write_text(json.dumps(dnsproxy.RECORDS))
        dns_server = [sys.executable, "-m", "ciliary.workload.main", "dns-server", "--records",
                      str(records), "--domain", "example.com", "--port"]  # fmt: skip
        boot = tmp / "envoy.json"
        boot.write_text(json.dumps(standalone_envoy(ips["server-0"], tmp / "envoy-admin.sock")))
        envoy = [str(envoy_binary()), "-c", str(boot), "--concurrency", "1",
                 "--base-id-path", str(tmp / "base-id"), "--use-dynamic-base-id",
                 "--log-level", "warning"]  # fmt: skip
        with (
            _process(["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c",
                      str(tmp / "nginx.conf")], netns["server-0"], (L7_PORT, DIRECT_PORT),
                     tmp / "nginx.log"),
            # in a session of its own, as the agent starts the node's Envoy (processes.
            # spawn_detached): with the kernel's autogroups (sched_autogroup_enabled) a session is
            # a scheduling group, and an Envoy in the bench's session, with the client and nginx,
            # is scheduled as one group with them, which b's Envoy never is (docs/benchmarks.md)
            _process(envoy, netns["proxy-0"], (PROXY_PORT,), tmp / "envoy.log", own_session=True),
            _process([*dns_server, str(DNS_PORT)], netns["server-0"], (DNS_PORT,),
                     tmp / "dns.log"),
            _process([*dns_server, str(DNS_DIRECT_PORT)], netns["server-0"], (DNS_DIRECT_PORT,),
                     tmp / "dns-direct.log"),
        ):  # fmt: skip
            client = tools.enter(netns["client-0"])
            targets = [
                Target(DIRECT, "ciliary", None, client, ips["server-0"], agent),
                Target(L7, "ciliary", None, client, ips["server-0"], agent),
                Target(ENVOY, "envoy", None, client, ips["proxy-0"], agent),
            ]
            ports = {DIRECT: DIRECT_PORT, L7: L7_PORT, ENVOY: PROXY_PORT}
            check_paths(client, {s.name: f"http://{s.server_ip}:{ports[s.name]}/"
                                 for s in targets})  # fmt: skip
            yield targets, ports, agent
    finally:
        manager.down(t)


def httpload(binary: Path, client: list[str], ip: str, port: int, seconds: float,
             *, keepalive: bool) -> tuple[float, float, float, float]:  # fmt: skip
    """(requests/s, p50 usec, p99 usec, failed requests) of ``seconds`` of GETs, one in flight;
    a failed one (a dropped connection, 2 s timeout) is retried on a new connection."""
    out = tools.run_tool(
        [*client, str(binary), "-k" if keepalive else "-c", ip, str(port), PATH, str(seconds)],
        seconds + 30,
    )
    count, elapsed, p50, p99, failed = out.split()
    return int(count) / float(elapsed), float(p50), float(p99), float(failed)


def alternating(binary: Path, client: list[str], ends: tuple[tuple[str, int], tuple[str, int]],
                seconds: float, *, keepalive: bool) -> tuple[tuple[float, ...], ...]:  # fmt: skip
    """Each end's (requests/s, p50 usec, p99 usec, failed requests) from one httpload whose
    requests alternate between ``ends`` ((address, port) each): its requests over their own
    time."""
    (ip_a, port_a), (ip_b, port_b) = ends
    out = tools.run_tool(
        [*client, str(binary), "-ka" if keepalive else "-ca", ip_a, str(port_a), ip_b,
         str(port_b), PATH, str(seconds)],
        seconds + 30,
    )  # fmt: skip
    lines = out.strip().splitlines()
    if len(lines) != 2:
        raise RuntimeError(f"httpload printed {len(lines)} lines, not 2: {out[-200:]}")
    found = []
    for line in lines:
        count, spent, p50, p99, failed = line.split()
        found.append((int(count) / float(spent), float(p50), float(p99), float(failed)))
    return tuple(found)


def alternating_rounds(binary: Path, targets: list[Target], ports: dict[str, int], *,
                       rounds: int, seconds: float, agents: list[int],
                       log: Callable[[str], None]) -> Samples:  # fmt: skip
    """b and c in ``rounds`` alternating runs per metric (which goes first alternating by
    round), each once the agent is idle: samples as ``interleave``'s, b and c only."""
    by_name = {t.name: t for t in targets}
    pair = (by_name[L7], by_name[ENVOY])
    samples: Samples = {m: {t.name: [] for t in pair} for m in METRICS}
    for r in range(rounds):
        order = pair if r % 2 == 0 else pair[::-1]
        for key in METRICS:
            _quiesce(agents, log, GROUP)
            ends = ((order[0].server_ip, ports[order[0].name]),
                    (order[1].server_ip, ports[order[1].name]))  # fmt: skip
            try:
                found = alternating(binary, pair[0].client, ends, seconds,
                                    keepalive=key == "keepalive")  # fmt: skip
            except RuntimeError as err:
                raise RuntimeError(f"b and c alternating ({key}): {err}") from err
            for target, value in zip(order, found, strict=True):
                samples[key][target.name].append(value)
        log(f"{GROUP}: alternating round {r + 1}/{rounds} done")
    return samples


def alternating_rows(samples: Samples, titles: dict[str, str], *, rounds: int, seconds: float
                     ) -> list[dict[str, Any]]:  # fmt: skip
    """Per metric: b's and c's requests/s and p50 from the alternating runs (medians, ratio
    against c, ``b/c``), then each round's own b/c (requests/s) in percent: median, range."""
    out: list[dict[str, Any]] = []
    how = ("b and c alternating in one run (one client process, requests alternating between"
           " them, each side's over their own time)")  # fmt: skip
    for key in METRICS:
        out += _target_rows(samples, key, (L7, ENVOY), 2, title=f"{titles[key]}, {how}",
                            metric=f"{key}-alternating", rounds=rounds,
                            seconds=seconds)  # fmt: skip
        ratios = [
            100 * b[0] / c[0] if c[0] else 0.0
            for b, c in zip(samples[key][L7], samples[key][ENVOY], strict=True)
        ]
        out.append({
            "benchmark": f"{titles[key]}, {how}: each round's b/c of requests/s",
            "metric": f"{key}-alternating-ratio",
            "unit": "% of c",
            "baseline": None,
            "values": {
                "median of the rounds' b/c": median(ratios),
                "lowest round": min(ratios),
                "highest round": max(ratios),
            },
            "samples": {"b/c": ratios},
            "group": GROUP,
        })  # fmt: skip
    return out


def syn_retransmits(client: list[str]) -> int:
    """The client netns's SYN retransmissions so far (``TcpExtTCPSynRetrans``, nstat): a SYN
    that got no SYN-ACK in time, or an unacceptable ACK (a TIME_WAIT socket's) instead."""
    out = tools.run_tool([*client, "nstat", "-asz", "TcpExtTCPSynRetrans"], 10)
    for line in out.splitlines():
        if line.startswith("TcpExtTCPSynRetrans"):
            return int(line.split()[1])
    raise RuntimeError(f"nstat printed no TcpExtTCPSynRetrans: {out[-200:]}")


def metrics(binary: Path, ports: dict[str, int]) -> dict[str, tuple[str, str, bool, Metric]]:
    """keep-alive and new-connection runs: (requests/s, p50, p99, failed, SYN retransmits)."""

    def measure(keepalive: bool) -> Metric:
        def one(t: Target, s: float) -> tuple[float, ...]:
            try:
                before = syn_retransmits(t.client)
                found = httpload(binary, t.client, t.server_ip, ports[t.name], s,
                                 keepalive=keepalive)  # fmt: skip
                return (*found, float(syn_retransmits(t.client) - before))
            except RuntimeError as err:
                raise RuntimeError(f"{t.name}: {err}") from err

        return one

    return {
        "keepalive": ("HTTP GET, one keep-alive connection", "req/s", True, measure(True)),
        "close": ("HTTP GET, a new connection per request", "req/s", True, measure(False)),
    }


def _target_rows(samples: Samples, key: str, setups: tuple[str, ...], columns: int, *,
                 title: str, metric: str, rounds: int, seconds: float
                 ) -> list[dict[str, Any]]:  # fmt: skip
    """``samples[key]``'s requests/s, latency p50 and (``columns`` 3) p99 rows of ``setups``:
    medians, the ratio against c and ``b/c`` the target's (requests/s: b/c; latency: c/b, so
    ≥ 0.9 reads the same way)."""
    out = []
    kinds = (("requests/s", "req/s", True), ("latency p50", "usec", False),
             ("latency p99", "usec", False))  # fmt: skip
    for col, (what, unit, higher) in enumerate(kinds[:columns]):
        per = {s: [v[col] for v in samples[key][s]] for s in setups}
        values = {s: median(v) for s, v in per.items()}
        b, c = values[L7], values[ENVOY]
        score = (b / c if higher else c / b) if b and c else 0.0
        out.append({
            "benchmark": f"{title}: {what}, median of {rounds} x {seconds}s",
            "metric": f"{metric}-{what.split()[-1].replace('requests/s', 'rps')}",
            "unit": unit,
            "higher_is_better": higher,
            "baseline": BASELINE,
            "values": values,
            "samples": per,
            "b/c": round(score, 3),
            "target": f"b/c >= {TARGET_B_C}",
            "group": GROUP,
        })  # fmt: skip
    return out


def http_rows(samples: Samples, titles: dict[str, str], *, rounds: int, seconds: float
              ) -> list[dict[str, Any]]:  # fmt: skip
    """Per metric: requests/s, p50 and p99 (usec) rows; values a, b, c (medians of the rounds),
    the ratio against c; ``b/c`` the target's ratio (requests/s: b/c; latency: c/b, so ≥ 0.9
    reads the same way); then the failed requests and the client's SYN retransmissions (summed
    over the rounds)."""
    out = []
    for key in METRICS:
        out += _target_rows(samples, key, SETUPS, 3, title=titles[key], metric=key,
                            rounds=rounds, seconds=seconds)  # fmt: skip
        for col, what, name, unit in (
            (3, "failed requests (no answer within 2 s: a dropped packet)", "failed", "requests"),
            (4, "the client's SYN retransmissions", "syn-retrans", "SYNs"),
        ):
            counts = {s: [v[col] for v in samples[key][s]] for s in SETUPS}
            out.append({
                "benchmark": f"{titles[key]}: {what}, sum of {rounds} x {seconds}s",
                "metric": f"{key}-{name}",
                "unit": unit,
                "higher_is_better": False,
                "baseline": None,
                "values": {s: sum(v) for s, v in counts.items()},
                "samples": counts,
                "group": GROUP,
            })  # fmt: skip
    return out


def agent_row(agent_cpu: dict[str, list[float]], rounds: int) -> dict[str, Any]:
    """The node agent's CPU per run (% of one core; b: its access-log lines → L7 records)."""
    return {
        "benchmark": f"node agent CPU during the runs (% of one core), median of {rounds}",
        "metric": "agent-cpu",
        "unit": "%",
        "higher_is_better": False,
        "baseline": None,
        "values": {k: median(v) for k, v in agent_cpu.items() if v},
        "group": GROUP,
    }


def access_log_line(i: int) -> bytes:
    """Envoy's access log line of request ``i`` (``ACCESS_LOG_FORMAT``): a client's GETs to a
    server on its port 80, every tenth denied; the client's port changes every request."""
    fields = {
        "start_time": f"{1_796_492_113 + i // 1000}.{i % 1000:03d}000",
        "chain": "ep11-egress-80",
        "source": f"{ACCESS_LOG_CLIENT}:{30000 + i % 1000}",
        "destination": f"{ACCESS_LOG_SERVER}:80",
        "method": "GET",
        "protocol": "HTTP/1.1",
        "code": "200" if i % 10 else "403",
        "duration_us": str(800 + i % 100),
        "grpc_status": "-",
        "details": "via_upstream" if i % 10 else "rbac_access_denied_matched_policy[none]",
        "flags": "-",
        "authority": ACCESS_LOG_SERVER,
        "path": f"/public/{i % 50}",
        "request_id": "868fe0ea-0553-425c-9c55-446b3ce59cf1",
        "user_agent": "httpload",
    }
    return (ACCESS_LOG_SEPARATOR.join(fields[n] for n, _ in ACCESS_LOG_FIELDS) + "\n").encode()


def access_log_cost(lines: int = 20_000, rounds: int = 3) -> dict[str, float]:
    """The agent's CPU per access log line (one request and its response: two L7 flows), µs,
    in process (``time.process_time``, the best of ``rounds``), stage by stage as the agent
    runs them: the pipe reader's parse; + the two L7 records; + Hubble's decode of each
    (``FlowDecoder.decode_l7``, endpoints from the hubble bench's decoder); + the observer ring
    and the metrics (the hubble bench's defaults and the L7 dashboard's httpV2)."""
    from bench.hubble_bench import DEFAULT_METRICS, _decoder, _registry  # noqa: PLC0415
    from ciliary.agent.accesslog import (  # noqa: PLC0415
        parse_line,
        parse_lines,
        to_l7_batch,
        to_l7_records,
    )
    from ciliary.agent.l7rows import decode_l7_batch  # noqa: PLC0415
    from ciliary.hubble.metrics import FlowMetrics  # noqa: PLC0415
    from ciliary.hubble.observer import LocalObserver  # noqa: PLC0415

    data = [access_log_line(i) for i in range(lines)]
    decoder = _decoder()
    observer = LocalObserver("bench-node", capacity=4095)
    observer.add_flow_hook(FlowMetrics(f"{DEFAULT_METRICS} {L7_METRICS}", _registry()).on_flow)
    families = decoder.families

    def _bad(line: bytes, err: Exception) -> None:
        raise AssertionError(f"{err}: {line!r}")

    def parse(batch: list[bytes]) -> None:
        for line in batch:
            parse_line(line)

    def records(batch: list[bytes]) -> None:
        for line in batch:
            to_l7_records(parse_line(line))

    def decoded(batch: list[bytes]) -> None:
        for line in batch:
            for rec in to_l7_records(parse_line(line)):
                families[rec.type](rec)

    def observed(batch: list[bytes]) -> None:
        for line in batch:
            for rec in to_l7_records(parse_line(line)):
                observer.on_flow(families[rec.type](rec))

    batched = LocalObserver("bench-node", capacity=4095)
    batched.add_counted_flow_hook(
        FlowMetrics(f"{DEFAULT_METRICS} {L7_METRICS}", _registry()).on_flows
    )
    read = 200  # lines of a 64 KiB read of the pipe, about

    def batch_parse(batch: list[bytes]) -> None:
        for i in range(0, len(batch), read):
            parse_lines(batch[i : i + read], _bad)

    def batch_observed(batch: list[bytes]) -> None:
        for i in range(0, len(batch), read):
            l7_batch = to_l7_batch(parse_lines(batch[i : i + read], _bad))
            batched.on_flow_rows(decode_l7_batch(decoder, l7_batch))

    out = {}
    for name, stage in (("parse", parse), ("+ L7 records", records),
                        ("+ Hubble decode (2 flows)", decoded),
                        ("+ observer ring + metrics", observed),
                        ("batched (the agent's path): parse", batch_parse),
                        ("batched: + L7 batch, rows, observer ring + metrics",
                         batch_observed)):  # fmt: skip
        stage(data[:2000])  # warm-up
        best = []
        for _ in range(rounds):
            t0 = time.process_time()
            stage(data)
            best.append((time.process_time() - t0) / lines * 1e6)
        out[name] = round(min(best), 1)
    return out


def access_log_row(cost: dict[str, float]) -> dict[str, Any]:
    return {
        "benchmark": "agent CPU per access log line (request + response), in process",
        "metric": "access-log-us",
        "unit": "us",
        "higher_is_better": False,
        "baseline": None,
        "values": cost,
        "group": GROUP,
    }


def run(*, rounds: int = 5, seconds: float = 2, queries: int = dnsproxy.QUERIES,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:  # fmt: skip
    """The HTTP setups in one lab, then the DNS proxy's bench; rows of both."""
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="ciliary-bench-l7-") as tmp,
        tools.c_binary(tools.SOURCE.with_name("httpload.c")) as binary,
    ):
        t0 = time.monotonic()
        with l7_lab(Path(tmp)) as (targets, ports, agent):
            log(f"{GROUP}: lab, nginx, Envoy ready, paths checked after"
                f" {time.monotonic() - t0:.1f}s")  # fmt: skip
            ms = metrics(binary, ports)
            samples, cpu = interleave(targets, ms, rounds=rounds, seconds=seconds,
                                      agents=[agent], log=log, group=GROUP)  # fmt: skip
            alt = alternating_rounds(binary, targets, ports, rounds=rounds, seconds=seconds,
                                     agents=[agent], log=log)  # fmt: skip
            _quiesce([agent], log, GROUP)  # the agent's proxy, not its HTTP backlog
            in_lab = dnsproxy.ask_from(targets[0].client, targets[0].server_ip, queries)
        titles = {k: v[0] for k, v in ms.items()}
        results += http_rows(samples, titles, rounds=rounds, seconds=seconds)
        results += alternating_rows(alt, titles, rounds=rounds, seconds=seconds)
        results.append(agent_row(cpu, rounds))
        results.append(access_log_row(access_log_cost()))
    for row in results:
        if row["metric"] in (
            "keepalive-rps",
            "close-rps",
            "keepalive-alternating-rps",
            "close-alternating-rps",
        ):
            log(f"{GROUP}: {row['benchmark']}: b/c {row['b/c']} (target >= {TARGET_B_C})")
    log(f"{GROUP}: DNS in the lab (the agent's proxy, the datapath's redirect): p50 added"
        f" {dnsproxy.added_ms(in_lab):.2f} ms (target <= 1 ms); lost {in_lab['proxy']['lost']}"
        f" / {in_lab['direct']['lost']}")  # fmt: skip
    for row in dnsproxy.rows(in_lab, LAB_DNS):
        results.append({**row, "group": GROUP})
    for row in dnsproxy.run(queries=queries, log=log):
        results.append({**row, "group": GROUP})
    return results
