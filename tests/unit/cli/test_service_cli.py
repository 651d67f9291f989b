"""``ciliary service list`` and ``ciliary bpf lb list`` render the agent's listing in
cilium-dbg's shapes (numbered backends with their state; slot 0 as ``0.0.0.0:0`` with its flags,
IPv6 in brackets, never taken for rich markup); ``bpf ct list`` names service entries and the
rev-NAT index of translated connections."""

from __future__ import annotations

import io

from rich.console import Console

from ciliary.cli.bpf import render_ct, render_lb
from ciliary.cli.service import render_services
from ciliary.core.models import CTEntry, LBBackend, LBMapEntry, ServiceFrontend


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


def test_service_list_numbers_the_backends() -> None:
    console, out = _console()
    render_services(
        console,
        [
            ServiceFrontend(
                id=3, address="10.96.0.5", port=80, protocol="TCP", type="ClusterIP",
                backends=[
                    LBBackend(id=1, address="10.0.1.5", port=8080, protocol="TCP", state="active"),
                    LBBackend(
                        id=2, address="fd00::7", port=8080, protocol="TCP", state="terminating"
                    ),
                ],
            )
        ],
    )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ID", "Frontend", "Service", "Type", "Backend"]
    first = ["3", "10.96.0.5:80/TCP", "ClusterIP", "1", "=>", "10.0.1.5:8080/TCP", "(active)"]
    assert lines[1].split() == first
    assert lines[2].split() == ["2", "=>", "[fd00::7]:8080/TCP", "(terminating)"]


def test_bpf_lb_list_shows_slots_with_the_rev_nat_index() -> None:
    console, out = _console()
    render_lb(
        console,
        [
            LBMapEntry(service_address="fd00:10:96::5", service_port=80, protocol="TCP", slot=0,
                       rev_nat_index=4, flags=["ClusterIP", "non-routable"]),
            LBMapEntry(service_address="fd00:10:96::5", service_port=80, protocol="TCP", slot=1,
                       rev_nat_index=4, backend_address="fd00::5", backend_port=8080, flags=[]),
        ],
    )  # fmt: skip
    lines = [" ".join(line.split()) for line in out.getvalue().splitlines()]
    assert lines == [
        "SERVICE ADDRESS BACKEND ADDRESS (REVNAT_ID) (SLOT)",
        "[fd00:10:96::5]:80/TCP (0) [::]:0 (4) (0) [ClusterIP, non-routable]",
        "[fd00:10:96::5]:80/TCP (1) [fd00::5]:8080/TCP (4) (1)",
    ]


def test_bpf_ct_list_keeps_ipv6_addresses_and_names_service_entries() -> None:
    console, out = _console()

    def ct(dst: str, dport: int, flags: list[str]) -> CTEntry:
        return CTEntry(
            family="IPv6", protocol="TCP", src="fd00::1", dst=dst, sport=40000, dport=dport,
            age_s=1.0, expires_in_s=50.0, tx_packets=1, tx_bytes=74, rx_packets=0, rx_bytes=0,
            tx_flags=["SYN"], rx_flags=[], flags=flags, src_identity=5, dst_identity=0,
            rev_nat_index=4,
        )  # fmt: skip

    render_ct(console, [ct("fd00:10:96::5", 80, ["service"]), ct("fd00::5", 8080, [])])
    text = " ".join(out.getvalue().split())
    assert "[fd00::1]:40000 -> [fd00:10:96::5]:80" in text  # brackets are not rich markup
    assert "[fd00::1]:40000 -> [fd00::5]:8080" in text
    assert "service,rev-nat=4" in text
