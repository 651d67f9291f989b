"""The service allocators on their own: ranges, choices, reservations of ongoing writes,
exhaustion, and the claim keys a Service holds."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliary.apiserver.main import parse_args
from ciliary.apiserver.servicealloc import (
    AllocatedError,
    IPRange,
    NotInRangeError,
    RangeFullError,
    ServiceAllocator,
    ip_key,
    parse_port_range,
    parse_service_cidrs,
    port_key,
)
from ciliary.k8s.resources import by_path


def alloc(cidrs: str = "10.96.0.0/28", ports: str = "30000-30009") -> ServiceAllocator:
    a = ServiceAllocator(parse_service_cidrs(cidrs), parse_port_range(ports))
    a.rng = random.Random(7)
    a.load([])
    return a


def test_flags_parse_as_kube_apiservers() -> None:
    v4, v6 = parse_service_cidrs("10.96.0.0/16, fd00:10:96::/112")
    assert (str(v4), str(v6)) == ("10.96.0.0/16", "fd00:10:96::/112")
    for bad, why in (
        ("10.96.0.0/16,10.97.0.0/16", "at most one CIDR per IP family"),
        ("fd00::/64", "mask must be >= 108"),
        ("10.96.0.0/33", "10.96.0.0/33"),
        ("", "one or two CIDRs"),
        ("10.0.0.0/24,fd00::/112,10.1.0.0/24", "one or two CIDRs"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_service_cidrs(bad)
    assert parse_port_range("30000-32767") == (30000, 32767)
    for bad in ("30000", "x-y", "32767-30000", "0-10"):
        if bad == "30000":
            assert parse_port_range(bad) == (30000, 30000)
            continue
        with pytest.raises(ValueError, match="--service-node-port-range"):
            parse_port_range(bad)


def test_range_bounds_and_the_first_address() -> None:
    v4 = IPRange(ipaddress.ip_network("10.96.0.0/28"))
    assert (v4.first, v4.size) == ("10.96.0.1", 14)  # .0 and the broadcast .15 never handed out
    assert v4.offset("10.96.0.14") == 13 and v4.offset("10.96.0.15") is None
    assert v4.offset("10.96.0.0") is None and v4.offset("fd00::1") is None
    v6 = IPRange(ipaddress.ip_network("fd00:10:96::/124"))
    assert (v6.first, v6.size) == ("fd00:10:96::1", 15)  # no broadcast in IPv6


def test_choices_fill_the_upper_band_first_never_the_first_address_then_full() -> None:
    a = alloc("10.96.0.0/24")
    picked = []
    for _ in range(253):
        with a.session() as s:
            ip = s.pick_ip("IPv4")
        a.committed([ip_key(ip)], [])
        picked.append(IPRange(a.cidrs[0]).offset(ip))
    band = IPRange(a.cidrs[0]).band()
    assert band == 16 and all(off >= band for off in picked[: 254 - band])
    assert sorted(picked) == list(range(1, 254))  # every address but network + 1
    with a.session() as s, pytest.raises(RangeFullError, match="range is full"):
        s.pick_ip("IPv4")


def test_asked_for_addresses_and_ports() -> None:
    a = alloc()
    with a.session() as s:
        s.take_ip("10.96.0.1")  # the first address can be asked for (the kubernetes Service)
        with pytest.raises(AllocatedError, match="provided IP is already allocated"):
            s.take_ip("10.96.0.1")  # reserved by this very write
        with pytest.raises(NotInRangeError, match=r"The range of valid IPs is 10.96.0.0/28"):
            s.take_ip("10.96.0.15")
        s.take_port(30000)
        with pytest.raises(AllocatedError, match="provided port is already allocated"):
            s.take_port(30000)
        with pytest.raises(NotInRangeError, match="The range of valid ports is 30000-30009"):
            s.take_port(8080)
    assert a.reserved == set()  # the write ended without committing: nothing held
    with a.session() as s:
        s.take_ip("10.96.0.1")


Op = tuple[str, int]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["pick", "take", "release", "port", "fail"]), st.integers(0, 20)),
        max_size=60,
    ),
    st.integers(0, 2**32),
)
def test_never_the_same_address_or_port_twice(ops: list[Op], seed: int) -> None:
    """Whatever the order of choices, asked-for values, releases and failed writes, no key is
    ever held by two Services, and a full range says so instead of repeating itself."""
    a = alloc()
    a.rng = random.Random(seed)
    held: dict[str, int] = {}  # key -> owner
    for owner, (op, n) in enumerate(ops):
        with a.session() as s:
            try:
                if op in ("pick", "fail"):
                    key = ip_key(s.pick_ip("IPv4"))
                elif op == "take":
                    key = ip_key(f"10.96.0.{n}")
                    s.take_ip(f"10.96.0.{n}")
                elif op == "port":
                    key = port_key(s.pick_port())
                else:
                    if held:
                        gone = sorted(held)[n % len(held)]
                        a.committed([], [gone])
                        del held[gone]
                    continue
            except RangeFullError:
                free = {
                    k for k in map(ip_key, (f"10.96.0.{i}" for i in range(2, 15))) if k not in held
                }
                assert op != "port" or len([k for k in held if "nodeports" in k]) == 10
                assert op == "port" or not free
                continue
            except (AllocatedError, NotInRangeError):
                assert key in held or not 1 <= n <= 14
                continue
            assert key not in held
            if op != "fail":  # a failed write commits nothing
                a.committed([key], [])
                held[key] = owner
    assert a.used == set(held)


@given(st.integers(1, 13), st.integers(0, 2**32))
def test_concurrent_writes_reserve_their_choices(writers: int, seed: int) -> None:
    """Writes in flight at once (none committed yet) never choose the same address."""
    a = alloc()
    a.rng = random.Random(seed)
    sessions = [a.session() for _ in range(writers)]
    choices = [cm.__enter__().pick_ip("IPv4") for cm in sessions]
    assert len(set(choices)) == writers
    for cm in sessions:
        cm.__exit__(None, None, None)
    assert a.reserved == set()


def test_claims_of_a_service() -> None:
    a = alloc("10.96.0.0/28,fd00:10:96::/112", "30000-30009")
    svc = {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIPs": ["10.96.0.5", "fd00:10:96::5", "10.200.0.1"],
            "ports": [{"nodePort": 30001}, {"nodePort": 30001}, {"nodePort": 8080}],
            "healthCheckNodePort": 30009,
        },
    }
    claims = a.claims(svc)
    assert set(claims) == {
        "/registry/ipaddresses/10.96.0.5",
        "/registry/ipaddresses/fd00:10:96::5",
        "/registry/ipaddresses/10.200.0.1",  # held whatever today's ranges are
        "/registry/servicenodeports/30001",
        "/registry/servicenodeports/30009",
        "/registry/servicenodeports/8080",
    }
    doc = json.loads(claims["/registry/ipaddresses/fd00:10:96::5"])
    assert doc["kind"] == "IPAddress" and doc["spec"]["parentRef"]["name"] == "web"
    external = {"type": "ExternalName", "clusterIPs": ["10.96.0.5"], "ports": []}
    assert a.claims({**svc, "spec": external}) == {}
    assert a.claims_of(by_path("", "v1", "pods"), svc) == {}
    assert a.claims_of(by_path("", "v1", "services"), svc) == claims


def test_the_servers_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--etcd-servers", "http://127.0.0.1:2379"])
    assert [str(n) for n in args.service_allocator.cidrs] == ["10.0.0.0/24"]  # upstream's
    assert args.service_allocator.node_ports == (30000, 32767)
    lab = parse_args(
        ["--etcd-servers", "x", "--service-cluster-ip-range", "fd00:10:96::/112,10.96.0.0/16"]
    )
    assert lab.service_allocator.primary_family == "IPv6"
    with pytest.raises(SystemExit):
        parse_args(["--etcd-servers", "x", "--service-node-port-range", "32767-30000"])
    assert "--service-node-port-range '32767-30000'" in capsys.readouterr().err
