"""The services benchmark's iptables baseline has kube-proxy's shape (bench/services.py): what
is measured against ciliary must be the rules kube-proxy writes, and load as one
``iptables-restore`` input."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import datapath, services
from bench.datapath import Metric, PerPacket, Target
from bench.services import IPT_VIP, PORTS, kube_proxy_rules, lab_file

from ciliary.lab.schema import parse_lab_text


def test_kube_proxy_rules_shape() -> None:
    text = kube_proxy_rules(5, IPT_VIP, "10.252.20.130")
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    jumps = [line for line in lines if line.startswith("-A KUBE-SERVICES -d ")]
    assert len(jumps) == 4 + len(PORTS)  # 4 others of one port, the measured one's ports
    # the measured Service in the middle, DNAT to the server on each of its ports
    assert [j for j in jumps if IPT_VIP in j] == jumps[2 : 2 + len(PORTS)]
    for port in PORTS:
        assert f"-j DNAT --to-destination 10.252.20.130:{port}" in text
    # two endpoints: a random split of 1/2, then the rest; every KUBE-SEP marks its hairpin
    assert text.count("-m statistic --mode random --probability 0.50000000000 ") == 4
    seps = [line for line in lines if line.startswith(":KUBE-SEP-")]
    assert len(seps) == 4 * 2 + len(PORTS)
    assert text.count("-j KUBE-MARK-MASQ") == len(jumps) + len(seps)
    assert "-A KUBE-POSTROUTING -j MASQUERADE --random-fully" in lines
    chains = {line[1:].split()[0] for line in lines if line.startswith(":")}
    targets = {line.split(" -j ")[1].split()[0] for line in lines if " -j " in line}
    assert {t for t in targets if t.startswith("KUBE-")} <= chains  # every jump has its chain


@pytest.mark.parametrize("socket_lb", [False, True])
def test_lab_file_pins_socket_lb(socket_lb: bool) -> None:
    """The tc rows' lab says socketLB off and the socket-LB rows' on, whatever the default."""
    parsed = parse_lab_text(lab_file("bsvc", "bsvca", socket_lb=socket_lb), "bench.yaml")
    assert parsed.lab.spec.socket_lb.enabled is socket_lb
    assert "socketLB: {enabled: " + str(socket_lb).lower() + "}" in lab_file(
        "bsvc", "bsvca", socket_lb=socket_lb
    )


def test_per_packet_run_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ns per packet of the recorded targets' runs from the program's counters around each run;
    a target's first run (the warm-up) and the targets not recorded leave no sample."""
    counters = iter([(0, 0), (1_000, 10), (1_000, 10), (5_000, 30), (5_000, 30), (5_600, 32)])
    monkeypatch.setattr(datapath, "prog_run_stats", lambda pin: next(counters))
    pod = Target("pod IP", "ciliary", 1, [], "10.0.0.2")
    vip = Target("ClusterIP", "ciliary", 1, [], "10.96.0.5")
    other = Target("iptables", "iptables", 1, [], "10.0.0.3")
    per = PerPacket(lambda t, s: (float(s),), tmp_path / "cil_from_container", [pod, vip])
    assert per(pod, 1) == (1.0,)  # warm-up: (0, 0) -> (1000, 10) not kept
    assert per(other, 2) == (2.0,)  # not recorded: no counters read
    assert per(pod, 2) == (2.0,)  # 4000 ns over 20 packets
    assert per(vip, 1) == (1.0,)  # vip's warm-up
    assert per.samples == {"pod IP": [200.0]}


def test_prog_run_stats_of_a_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """socket-LB's programs are pinned as links: their program's counters are read through the
    link's prog_id (the socket-LB rows' cil_sock4_connect ns per connect())."""
    pin = tmp_path / "socketlb" / "cil_sock4_connect"
    answers = {
        ("link", "show", "pinned", str(pin)): {"id": 3, "prog_id": 41},
        ("prog", "show", "id", "41"): {"id": 41, "run_time_ns": 9_000, "run_cnt": 12},
        ("prog", "show", "pinned", str(tmp_path / "p")): {"id": 5, "run_time_ns": 7, "run_cnt": 1},
    }
    monkeypatch.setattr(datapath, "_bpftool_json", lambda *argv: answers[argv])
    assert datapath.prog_run_stats(pin, link=True) == (9_000, 12)
    assert datapath.prog_run_stats(tmp_path / "p") == (7, 1)
    counters = iter([(0, 0), (10, 1), (10, 1), (1_010, 3)])
    seen: list[tuple[Path, bool]] = []

    def fake(p: Path, *, link: bool = False) -> tuple[int, int]:
        seen.append((p, link))
        return next(counters)

    monkeypatch.setattr(datapath, "prog_run_stats", fake)
    vip = Target("ClusterIP", "ciliary", 1, [], "10.96.0.5")
    per = PerPacket(lambda t, s: (float(s),), pin, [vip], link=True)
    per(vip, 1)  # warm-up
    per(vip, 2)
    assert per.samples == {"ClusterIP": [500.0]} and set(seen) == {(pin, True)}


def test_paired_rounds_alternate_and_give_each_rounds_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pair's order alternates round by round after one recorded-nothing warm-up run each;
    each round's ratio is its own ClusterIP over its own pod IP value, so a slow round (both
    halved) does not move it."""
    monkeypatch.setattr(services, "_quiesce", lambda *a, **k: None)
    direct = Target("pod IP", "ciliary", 1, ["c0"], "10.0.0.2")
    via = Target("ClusterIP", "ciliary", 1, ["c1"], "10.96.0.9")
    calls: list[tuple[str, str, float]] = []
    slow = {2}  # round 2 runs at half speed for both

    def measure(key: str) -> Metric:
        def run(t: Target, s: float) -> tuple[float, ...]:
            calls.append((key, t.name, s))
            r = sum(1 for c in calls if c[0] == "crr" and c[2] == 2.0 and c[1] == t.name) - 1
            f = 0.5 if key == "crr" and r in slow else 1.0
            if key == "crr":
                return ((1000.0 if t is direct else 950.0) * f,)
            return (10.0, 20.0) if t is direct else (10.5, 19.0)

        return run

    metrics = {k: ("t", "u", True, measure(k)) for k in ("crr", "rr")}
    samples, ratios = services._paired(
        (direct, via), metrics, rounds=4, seconds=2.0, agents=[], log=lambda _: None
    )
    assert calls[:2] == [("crr", "pod IP", 1), ("crr", "ClusterIP", 1)]
    crr_order = [name for key, name, s in calls[2:] if key == "crr"]
    assert crr_order == ["pod IP", "ClusterIP", "ClusterIP", "pod IP"] * 2
    assert len(samples["crr"]["pod IP"]) == 4 and len(samples["rr"]["ClusterIP"]) == 4
    assert ratios["crr"] == pytest.approx([95.0] * 4)
    assert ratios["rr-p50"] == pytest.approx([105.0] * 4)
    assert ratios["rr-p99"] == pytest.approx([95.0] * 4)
    res = services._ratio_result("ciliary, 1 Services", ratios, seconds=2.0)
    assert res["values"]["connection rate: median of the rounds' ratios"] == pytest.approx(95.0)
    assert res["values"]["latency p50: highest round"] == pytest.approx(105.0)
    assert res["baseline"] is None and "4 rounds" in res["benchmark"]


def test_alternating_run_once_per_round_and_its_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``alternate``, each round also has one run whose connections alternate between the
    two; its rates are recorded per side and its ratio per round, like the other metrics'."""
    monkeypatch.setattr(services, "_quiesce", lambda *a, **k: None)
    direct = Target("pod IP", "ciliary", 1, ["c0"], "10.0.0.2")
    via = Target("ClusterIP", "ciliary", 1, ["c1"], "10.96.0.9")
    metrics: dict[str, tuple[str, str, bool, Metric]] = {
        "crr": ("t", "u", True, lambda t, s: (1000.0,))
    }
    runs: list[float] = []

    def alternate(s: float) -> tuple[float, float]:
        runs.append(s)
        return 1000.0 + len(runs), 900.0 + len(runs)

    samples, ratios = services._paired(
        (direct, via), metrics, rounds=3, seconds=2.0, agents=[], log=lambda _: None,
        alternate=alternate,
    )  # fmt: skip
    assert runs == [2.0, 2.0, 2.0]
    assert samples[services.ALT] == {
        "pod IP": [(1001.0,), (1002.0,), (1003.0,)],
        "ClusterIP": [(901.0,), (902.0,), (903.0,)],
    }
    assert ratios[services.ALT] == pytest.approx(
        [100 * 901 / 1001, 100 * 902 / 1002, 100 * 903 / 1003]
    )
    assert ratios["crr"] == pytest.approx([100.0] * 3)


def test_alternating_rates_runs_connrate_a(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One ``connrate -a`` run, pinned, in the prefix (the cgroup); each side's rate is its
    connections over its own summed time."""
    seen: list[list[str]] = []

    def run_tool(argv: list[str], timeout: float) -> str:
        seen.append(list(argv))
        return "500 0.250000 500 0.200000\n"

    monkeypatch.setattr(services.tools, "run_tool", run_tool)
    rates = services.tools.alternating_rates(
        ["sh", "-c", "x", "procs"], tmp_path / "connrate",
        (("ns-a", "10.0.0.2"), ("ns-b", "10.96.0.9")), 2.0,
    )  # fmt: skip
    assert rates == pytest.approx((2000.0, 2500.0))
    (argv,) = seen
    assert argv[:4] == ["sh", "-c", "x", "procs"]
    assert argv[4:7] == services.tools.PIN
    assert argv[7:] == [str(tmp_path / "connrate"), "-a", "ns-a", "10.0.0.2", "ns-b",
                        "10.96.0.9", str(services.tools.CONNRATE_PORT), "2.0"]  # fmt: skip
