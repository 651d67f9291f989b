"""The services benchmark's iptables baseline has kube-proxy's shape (bench/services.py): what
is measured against ciliary must be the rules kube-proxy writes, and load as one
``iptables-restore`` input."""

from __future__ import annotations

from bench.services import IPT_VIP, PORTS, kube_proxy_rules


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
