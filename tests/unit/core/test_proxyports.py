"""The proxy ports table: upstream's names, the L7 kind → proxy choice, allocation."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ciliary.core.proxyports import (
    DNS_EGRESS,
    HTTP_EGRESS,
    HTTP_INGRESS,
    SAVED_PORTS,
    ProxyPorts,
    allocate,
    load,
    proxy_for_l7,
    save,
)


def test_l7_kinds_map_to_upstreams_proxies() -> None:
    assert proxy_for_l7("dns", True) == "cilium-dns-egress"
    assert proxy_for_l7("http", True) == "cilium-http-egress"
    assert proxy_for_l7("http", False) == "cilium-http-ingress"
    assert proxy_for_l7("dns", False) is None
    assert proxy_for_l7("kafka", True) is None
    ports = ProxyPorts({DNS_EGRESS: 10001, HTTP_EGRESS: 10002})
    assert ports.for_l7("dns", True) == 10001
    assert ports.for_l7("http", False) is None  # no ingress proxy port given
    assert ports.name_of(10002) == HTTP_EGRESS
    with pytest.raises(KeyError, match="cilium-http-ingress"):
        ports.port(HTTP_INGRESS)


def test_bad_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown proxy 'cilium-kafka'"):
        ProxyPorts({"cilium-kafka": 1})
    with pytest.raises(ValueError, match="cilium-dns-egress: port 70000"):
        ProxyPorts({DNS_EGRESS: 70000})
    with pytest.raises(ValueError, match="must differ"):
        ProxyPorts({DNS_EGRESS: 10000, HTTP_EGRESS: 10000})


def test_allocation_keeps_given_ports_and_skips_held_ones() -> None:
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    base = held.getsockname()[1]
    try:
        # the held UDP port is not free for a proxy (TCP and UDP both)
        got = allocate({DNS_EGRESS: 53}, port_range=(base, base + 20))
        assert got.port(DNS_EGRESS) == 53
        assert base not in got.ports.values()
        assert got.port(HTTP_EGRESS) < got.port(HTTP_INGRESS) <= base + 20
        with pytest.raises(ValueError, match="cilium-dns-egress: no free port"):
            allocate({}, port_range=(base, base))
    finally:
        held.close()


def test_restored_ports_are_kept_while_free_or_still_their_proxys(tmp_path: Path) -> None:
    """An agent restart keeps the previous agent's ports (upstream's proxy_ports_state.json):
    a saved port still free is reused, one something else holds is not, unless it is the
    proxy's own that still runs (the node's Envoy outlives the agent and keeps listening)."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    busy = held.getsockname()[1]
    try:
        saved = tmp_path / SAVED_PORTS
        save(saved, ProxyPorts({DNS_EGRESS: busy + 7, HTTP_EGRESS: busy, HTTP_INGRESS: busy + 5}))
        restored = load(saved)
        assert restored == {DNS_EGRESS: busy + 7, HTTP_EGRESS: busy, HTTP_INGRESS: busy + 5}
        span = (busy + 1, busy + 20)
        got = allocate({}, port_range=span, restored=restored)
        assert got.port(DNS_EGRESS) == busy + 7 and got.port(HTTP_INGRESS) == busy + 5
        assert got.port(HTTP_EGRESS) == busy + 1  # its saved port is another socket's now
        kept = allocate({}, port_range=span, restored=restored, held=(HTTP_EGRESS,))
        assert kept.port(HTTP_EGRESS) == busy  # Envoy still listens there: its own
        assert allocate({DNS_EGRESS: 53}, port_range=span, restored=restored).port(DNS_EGRESS) == 53
    finally:
        held.close()
    saved.write_text('{"cilium-dns-egress": "x", "nope": 1, "cilium-http-egress": 70000}')
    assert load(saved) == {}  # nothing usable: allocated afresh
    saved.write_text("[")
    assert load(saved) == {} and load(tmp_path / "missing.json") == {}
