"""Agent metrics: upstream cilium_* names, state read at scrape time, regeneration timing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ciliary.agent.endpoints import EndpointManager
from ciliary.agent.metrics import AgentMetrics, count_identities, identity_type
from ciliary.core.models import Endpoint, EndpointState


class State:
    def __init__(self) -> None:
        self.endpoints = {"ready": 2, "regenerating": 1}
        self.policy = (3, 7)
        self.identity_numbers = [1, 2, 4, 1000, 1001, (1 << 24) | 1]
        self.maps = [("ciliary_ct", 16384, 65536), ("ciliary_ipcache", 10, 0)]
        self.calls = 0

    def endpoints_by_state(self) -> dict[str, int]:
        self.calls += 1
        return dict(self.endpoints)


def build(state: State) -> tuple[AgentMetrics, CollectorRegistry]:
    reg = CollectorRegistry()
    metrics = AgentMetrics(
        reg,
        state.endpoints_by_state,
        lambda: state.policy,
        lambda: count_identities(state.identity_numbers),
        lambda: state.maps,
        version="1.2.3",
    )
    return metrics, reg


def test_state_is_read_at_scrape_time_only() -> None:
    state = State()
    _metrics, reg = build(state)
    assert state.calls == 0  # registering reads nothing
    assert reg.get_sample_value("cilium_endpoint_state", {"endpoint_state": "ready"}) == 2
    assert reg.get_sample_value("cilium_endpoint_state", {"endpoint_state": "disconnecting"}) == 0
    assert reg.get_sample_value("cilium_endpoint") == 3
    state.endpoints["ready"] = 5
    assert reg.get_sample_value("cilium_endpoint_state", {"endpoint_state": "ready"}) == 5
    assert reg.get_sample_value("cilium_policy") == 3
    assert reg.get_sample_value("cilium_policy_max_revision") == 7
    assert reg.get_sample_value("cilium_identity", {"type": "reserved"}) == 3
    assert reg.get_sample_value("cilium_identity", {"type": "cluster_local"}) == 2
    assert reg.get_sample_value("cilium_identity", {"type": "node_local"}) == 1
    assert reg.get_sample_value("cilium_bpf_map_pressure", {"map_name": "ciliary_ct"}) == 0.25
    # a map of unknown size has no pressure
    assert reg.get_sample_value("cilium_bpf_map_pressure", {"map_name": "ciliary_ipcache"}) is None
    assert any(
        s.name == "cilium_version" and s.labels["version"] == "1.2.3"
        for m in reg.collect()
        for s in m.samples
    )


def test_regeneration_histogram_and_counters() -> None:
    metrics, reg = build(State())
    assert reg.get_sample_value("cilium_endpoint_regenerations_total", {"outcome": "fail"}) == 0
    metrics.observe_regeneration(0.02, ok=True)
    metrics.observe_regeneration(0.5, ok=True)
    metrics.observe_regeneration(3.0, ok=False)
    assert reg.get_sample_value("cilium_endpoint_regenerations_total", {"outcome": "success"}) == 2
    assert reg.get_sample_value("cilium_endpoint_regenerations_total", {"outcome": "fail"}) == 1
    ok = {"scope": "total", "status": "success"}
    assert reg.get_sample_value("cilium_endpoint_regeneration_time_stats_seconds_count", ok) == 2
    assert (
        reg.get_sample_value(
            "cilium_endpoint_regeneration_time_stats_seconds_bucket", {**ok, "le": "0.025"}
        )
        == 1
    )
    failed = {"scope": "total", "status": "failure"}
    assert (
        reg.get_sample_value("cilium_endpoint_regeneration_time_stats_seconds_sum", failed) == 3.0
    )
    assert reg.get_sample_value("cilium_policy_regeneration_total") == 2


def test_a_failing_source_costs_only_its_family(caplog: pytest.LogCaptureFixture) -> None:
    state = State()
    reg = CollectorRegistry()

    def broken() -> tuple[int, int]:
        raise RuntimeError("policy manager gone")

    AgentMetrics(
        reg,
        state.endpoints_by_state,
        broken,
        lambda: count_identities([]),
        lambda: [],
        version="x",
    )
    with caplog.at_level(logging.ERROR):
        text = generate_latest(reg).decode()
    assert "cilium_endpoint_state" in text
    assert "cilium_policy_max_revision" not in text
    assert "policy" in caplog.text


def test_identity_types() -> None:
    assert identity_type(2) == "reserved"
    assert identity_type(256) == "cluster_local"
    assert identity_type((1 << 24) | 300) == "node_local"
    assert count_identities([]) == {"cluster_local": 0, "node_local": 0, "reserved": 0}


def _endpoint(ep_id: int) -> Endpoint:
    return Endpoint(
        id=ep_id,
        container_id=f"c{ep_id}",
        pod_name=f"p{ep_id}",
        namespace="default",
        labels={},
        identity=1000 + ep_id,
        state=EndpointState.READY,
        ipv4=None,
        ipv6=None,
        ifname="eth0",
        netns="/proc/1/ns/net",
        lxc=f"lxc{ep_id}",
        lxc_ifindex=0,
        mac="",
        node_mac="",
        created_at=0.0,
    )


def test_endpoint_manager_reports_each_policy_regeneration(tmp_path: Path) -> None:
    """The endpoint manager's hook feeds observe_regeneration (success and failure)."""
    metrics, reg = build(State())

    class Policy:
        def __init__(self) -> None:
            self.fail = False

        def realize(self, ep: Endpoint, ports: object) -> None:
            if self.fail:
                raise RuntimeError("map write failed")

    policy = Policy()
    manager = EndpointManager(
        state_dir=tmp_path,
        datapath=None,  # type: ignore[arg-type]
        ipam=None,  # type: ignore[arg-type]
        identities=None,  # type: ignore[arg-type]
        policy=policy,  # type: ignore[arg-type]
        on_regeneration=metrics.observe_regeneration,
    )
    manager._eps = {1: _endpoint(1), 2: _endpoint(2)}
    assert asyncio.run(manager.regenerate_all("policy changed")) == 2
    policy.fail = True
    with pytest.raises(RuntimeError):
        asyncio.run(manager.regenerate_all("policy changed"))
    assert reg.get_sample_value("cilium_endpoint_regenerations_total", {"outcome": "success"}) == 2
    assert reg.get_sample_value("cilium_endpoint_regenerations_total", {"outcome": "fail"}) == 1


def test_l7_proxy_requests_as_upstream() -> None:
    state = State()
    stats = {("fqdn", "received"): 5, ("fqdn", "forwarded"): 3, ("fqdn", "denied"): 1,
             ("fqdn", "parse_errors"): 1}  # fmt: skip
    reg = CollectorRegistry()
    AgentMetrics(
        reg, state.endpoints_by_state, lambda: state.policy,
        lambda: count_identities(state.identity_numbers), lambda: state.maps,
        version="1.2.3", l7_stats=lambda: stats,
    )  # fmt: skip
    text = generate_latest(reg).decode()
    assert "# TYPE cilium_policy_l7_total counter" in text
    assert 'cilium_policy_l7_total{proxy_type="fqdn",rule="denied"} 1.0' in text
    assert 'cilium_policy_l7_total{proxy_type="fqdn",rule="received"} 5.0' in text
    stats[("fqdn", "denied")] = 2  # read at scrape time
    assert 'rule="denied"} 2.0' in generate_latest(reg).decode()
    assert "cilium_policy_l7" not in generate_latest(build(state)[1]).decode()  # no proxies
