"""``make demo``: bring up the embedded default lab and walk through what it shows.

Each step runs a real client in one pod against a server in another and checks the outcome (the
database is protected by a policy, so the client's attempts must fail); the default lab has two
nodes (VXLAN between them) and puts the web server and the database on the second, so the
traffic crosses nodes and the database's node decides; a monitor subscription to every node's
agent collects the datapath's own events for those packets, and the same flows are
then read back through Hubble (the lab's relay, as ``ciliary observe`` does), with verdicts, drop
reasons and the policy that decided: for the database's default deny, the policy that selected it
(``db-from-web``), which the flow carries in its ``extensions``. The first step reaches the web
server by its Service's name (``web.shop.svc.cluster.local``: the lab's cluster DNS, reached
through its own ClusterIP, answers with the Service's ClusterIP, which socket-LB translates to
the pod at connect(), the lab's default). The lab stays up for the user to explore, with the
Hubble UI (``ciliary hubble ui`` on the relay, a process of the lab) at
``http://127.0.0.1:12000/`` until ``lab down``.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from ciliary.client.agent import AgentClient
from ciliary.core.models import MonitorEvent
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.client import sync_channel
from ciliary.hubble.explain import default_deny_of
from ciliary.hubble.printer import Printer, PrinterOptions
from ciliary.lab import manager, schema


@dataclass(frozen=True)
class Step:
    title: str
    pod: str
    argv: list[str]
    denied: bool = False
    """The policy must stop this one: success is the client failing."""


class _Collector(threading.Thread):
    """Reads the agent's monitor stream in the background until stopped."""

    def __init__(self, sock: Path) -> None:
        super().__init__(name="demo-monitor", daemon=True)
        self.events: list[MonitorEvent] = []
        self._client = AgentClient(sock, timeout=5)
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            self.ready.set()
            for ev in self._client.monitor():
                self.events.append(ev)
        except Exception:
            return

    def stop(self) -> None:
        self._client.close()


HUBBLE_UI_PORT = 12000
"""Upstream's ``cilium hubble ui`` port: the demo serves the UI there until ``lab down``."""

WEB_SERVICE = "web.shop.svc.cluster.local"
"""The default lab's Service in front of ``shop/web``."""


def _steps(view_ips: dict[str, tuple[str | None, str | None]]) -> list[Step]:
    web4, web6 = view_ips["shop/web"]
    echo4, echo6 = view_ips["shop/echo"]
    db4, db6 = view_ips["shop/db"]
    out = [  # by name: the cluster DNS (itself a Service) answers, the datapath translates
        Step("Service  client → web.shop.svc.cluster.local  HTTP GET", "default/client",
             ["ciliary", "workload", "http-get", f"http://{WEB_SERVICE}/", "--timeout", "3"]),
    ]  # fmt: skip
    for fam, web, echo, db in (("IPv4", web4, echo4, db4), ("IPv6", web6, echo6, db6)):
        if web is None or echo is None or db is None:
            continue
        host = f"[{web}]" if ":" in web else web
        out += [
            Step(f"{fam} TCP  client → web   HTTP GET", "default/client",
                 ["ciliary", "workload", "http-get", f"http://{host}/", "--timeout", "3"]),
            Step(f"{fam} TCP  client → echo  echo x3", "default/client",
                 ["ciliary", "workload", "tcp-echo", echo, "7", "--count", "3"]),
            Step(f"{fam} UDP  client → echo  echo x3", "default/client",
                 ["ciliary", "workload", "udp-echo", echo, "7", "--count", "3"]),
            Step(f"{fam} ICMP client → echo  ping x3", "default/client",
                 ["ciliary", "workload", "ping", echo, "-c", "3", "-i", "0.2"]),
            Step(f"{fam} TCP  client → db :5432 (policy db-from-web)", "default/client",
                 ["ciliary", "workload", "tcp-echo", db, "5432", "--timeout", "1"], denied=True),
        ]  # fmt: skip
    return out


def _show_hubble(console: Console, lab: str) -> int:
    """The last flows into ``shop`` read through the lab's relay, printed as ``ciliary observe
    --print-policy-names`` does; returns 1 when Hubble misses the policy drop."""
    relay = manager.record(lab).relay
    console.rule("Hubble: the same flows through the relay (ciliary observe --namespace shop)")
    if relay is None:
        console.print("[red]the lab has no Hubble relay[/red]")
        return 1
    out = io.StringIO()
    printer = Printer(PrinterOptions(policy_names=True), out, io.StringIO())
    dropped = explained = False
    request = observer_pb2.GetFlowsRequest(
        number=16, whitelist=[flow_pb2.FlowFilter(source_pod=["shop/"]),
                              flow_pb2.FlowFilter(destination_pod=["shop/"])],
    )  # fmt: skip
    with sync_channel(relay.address) as channel:
        for res in observer_pb2_grpc.ObserverStub(channel).GetFlows(request, timeout=10):
            if res.HasField("flow"):
                printer.write_flow(res)
                why = default_deny_of(res.flow)
                dropped |= res.flow.drop_reason_desc == flow_pb2.POLICY_DENIED
                explained |= why is not None and any("db-from-web" in p for p in why[1])
    printer.close()
    console.print(out.getvalue().rstrip(), markup=False, highlight=False)
    if not dropped:
        console.print("[red]Hubble did not report the policy drop of client → db[/red]")
        return 1
    if not explained:
        console.print("[red]Hubble's drop of client → db does not name db-from-web[/red]")
        return 1
    return 0


def _wait_servers(lab: str, ips: dict[str, tuple[str | None, str | None]]) -> None:
    """Servers start with their pods; give them a moment to listen before the first request."""
    web4 = ips["shop/web"][0] or ips["shop/web"][1]
    host = f"[{web4}]" if web4 and ":" in web4 else web4
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        res = manager.run_in_pod(
            "default/client",
            ["ciliary", "workload", "http-get", f"http://{host}/", "--timeout", "1"],
            name=lab,
        )
        if res.returncode == 0:
            return
        time.sleep(0.3)


def run(console: Console) -> int:
    # The demo's own console: markup on, and wide enough for its tables even when piped.
    console = Console(width=max(132, console.width), highlight=False, soft_wrap=False)
    default = schema.load_default()
    lab = default.lab.metadata.name
    if lab in manager.list_labs():
        console.print(f"[dim]lab {lab} is already up: recreating it[/dim]")
        manager.down(lab)
    console.rule("[bold]ciliary demo[/bold]: two nodes, four pods, our eBPF datapath")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as prog:
        view = manager.up(None, progress=prog)
    nodes = Table(title="nodes (network namespaces, one agent each)")
    for col in ("node", "netns", "agent pid", "pod CIDRs"):
        nodes.add_column(col)
    for n in view.nodes:
        nodes.add_row(n.name, n.netns, str(n.agent_pid), f"{n.ipv4_cidr}  {n.ipv6_cidr}")
    console.print(nodes)
    ips = {f"{p.namespace}/{p.name}": (p.ipv4, p.ipv6) for p in view.pods}
    socks = [manager.agent_socket(n.name, name=lab) for n in view.nodes]

    collectors = [_Collector(sock) for sock in socks]
    for collector in collectors:
        collector.start()
        collector.ready.wait(5)
    time.sleep(0.3)
    _wait_servers(lab, ips)

    console.rule(
        "pod → pod traffic through bpf_lxc (redirect_peer on one node, VXLAN between nodes)"
    )
    results = Table()
    for col in ("check", "from", "result", "output"):
        results.add_column(col)
    failures = 0
    for step in _steps(ips):
        res = manager.run_in_pod(step.pod, step.argv, name=lab)
        ok = (res.returncode == 0) != step.denied
        failures += not ok
        last = (res.stdout.strip().splitlines() or res.stderr.strip().splitlines() or [""])[-1]
        if ok and step.denied:
            result = "[green]denied[/green]"
        else:
            result = "[green]ok[/green]" if ok else "[red]FAIL[/red]"
        results.add_row(step.title, step.pod, result, last[:70])
    console.print(results)
    time.sleep(0.5)
    for collector in collectors:
        collector.stop()

    console.rule("what the datapath reported (ring buffer → agent → ciliary monitor)")
    events = Table()
    for col in ("time", "source", "destination", "summary", "verdict", "point", "identities"):
        events.add_column(col, no_wrap=True)
    captured = sorted((e for c in collectors for e in c.events), key=lambda e: e.time)
    seen = [e for e in captured if e.src_pod or e.dst_pod]
    for e in seen[-24:]:
        src = f"{e.src_pod or e.src_ip}:{e.src_port}" if e.src_port else (e.src_pod or e.src_ip)
        dst = f"{e.dst_pod or e.dst_ip}:{e.dst_port}" if e.dst_port else (e.dst_pod or e.dst_ip)
        events.add_row(
            e.time[11:23], src, dst, e.summary, e.verdict,
            "policy-verdict" if e.type == "policy-verdict" else e.observation_point,
            f"{e.src_identity}→{e.dst_identity}",
        )  # fmt: skip
    console.print(events)
    console.print(
        f"[dim]{len(captured)} events captured; showing the last {min(24, len(seen))}[/dim]"
    )

    failures += _show_hubble(console, lab)

    console.rule("endpoints (ciliary endpoint list, on every node)")
    eps = []
    for sock in socks:
        with AgentClient(sock) as cl:
            eps += cl.endpoints()
    table = Table()
    for col in ("ENDPOINT", "IDENTITY", "POD", "IPv4", "IPv6", "STATUS"):
        table.add_column(col)
    for ep in eps:
        table.add_row(str(ep.id), str(ep.identity), f"{ep.namespace}/{ep.pod_name}",
                      ep.ipv4 or "", ep.ipv6 or "", ep.state.value)  # fmt: skip
    console.print(table)
    not_ready = [ep for ep in eps if ep.state.value != "ready"]
    if not seen:
        console.print("[red]no datapath events were captured[/red]")
        failures += 1
    if not_ready:
        failures += 1
    console.rule("explore")
    try:  # a lab process: the supervisor keeps it up, `lab down` stops it
        ui = manager.start_hubble_ui(lab, port=HUBBLE_UI_PORT)
        console.print(f"  [bold]Hubble UI: {ui}[/bold]  (service map and flows, until lab down)")
    except manager.LabError as err:
        console.print(f"[red]Hubble UI: {err}[/red]")
        failures += 1
    echo4 = ips["shop/echo"][0]
    console.print(
        "  ciliary lab status                 # nodes and pods\n"
        "  export KUBECONFIG=$(ciliary lab kubeconfig)  # the lab's API server, for kubectl\n"
        "  kubectl get pods,cep -A -o wide    # pods and their CiliumEndpoints\n"
        "  ciliary endpoint list              # the agent's endpoints\n"
        "  ciliary bpf ct list                # connections tracked by bpf_lxc\n"
        "  ciliary service list               # Services as the datapath has them (bpf lb list)\n"
        "  ciliary lab exec default/client -- ciliary workload http-get http://web.shop/\n"
        "  ciliary monitor                    # live datapath events (-o json)\n"
        "  ciliary observe --verdict DROPPED  # Hubble flows via the relay (hubble's flags)\n"
        "  ciliary observe -f --namespace shop -o json\n"
        "  ciliary policy trace --from default/client --to shop/db --dport 5432/tcp  # why\n"
        "  ciliary hubble status              # flows in the ring buffers, connected nodes\n"
        f"  ciliary lab exec default/client -- ciliary workload ping {echo4} -c 3\n"
        "  ciliary lab down                   # remove everything"
    )
    if failures:
        console.print(f"[red]{failures} check(s) failed[/red]")
        return 1
    console.print("[green]all checks passed; the lab is still up[/green]")
    return 0
