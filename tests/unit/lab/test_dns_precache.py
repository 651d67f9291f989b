"""The lab's ``dnsProxy``: ``preCache`` answers checked in the lab file (an address that is no IP
is named with its field) and handed to every agent as ``--tofqdns-pre-cache`` (a file in the
lab's directory, read back by the agent's parser), ``minTtl`` as ``--tofqdns-min-ttl``; the
CLI's ``-o json`` of the cache is the pre-cache file's shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ciliary.agent.main import _parser
from ciliary.cli.fqdn import pre_cache
from ciliary.core.models import FQDNCacheEntry
from ciliary.lab import manager
from ciliary.lab.schema import LabFileError, parse_lab_text
from ciliary.lab.state import HubbleRecord, LabRecord, NodeRecord
from ciliary.policy.fqdn import DNSCache

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: demo}}
spec:
  conntrackGCInterval: 1.5
  dnsProxy:
    minTtl: 30
    idleConnectionGracePeriod: 5
    maxDeferredConnectionDeletes: 100
    preCache:
    - {{fqdn: partner.example.com, ips: [{ips}]}}
  nodes: [{{name: n1}}]
"""


def test_pre_cache_answers_are_checked_in_the_lab_file() -> None:
    lab = parse_lab_text(LAB.format(ips='192.0.2.1, "2001:db8::1"'), "lab.yaml").lab.spec
    (answer,) = lab.dns_proxy.pre_cache
    assert [str(ip) for ip in answer.ips] == ["192.0.2.1", "2001:db8::1"] and answer.ttl == 3600
    assert lab.dns_proxy.min_ttl == 30
    assert lab.dns_proxy.idle_connection_grace_period == 5.0
    assert lab.dns_proxy.max_deferred_connection_deletes == 100
    assert lab.conntrack_gc_interval == 1.5
    with pytest.raises(LabFileError, match=r"spec\.dnsProxy\.preCache\[0\]\.ips\[1\]"):
        parse_lab_text(LAB.format(ips="192.0.2.1, partner"), "lab.yaml")


def test_every_agent_gets_the_answers_as_its_pre_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager, "_lab_dir", lambda _name: tmp_path)
    answers = [{"fqdn": "a.io", "ips": ["192.0.2.1"], "ttl": 60, "lookup-time": 1000}]
    rec = LabRecord(
        name="demo", file=None, created_at=0, hubble=HubbleRecord(enabled=False),
        dns_pre_cache=answers, dns_min_ttl=30, dns_idle_connection_grace_period_s=5.0,
        dns_max_deferred_connection_deletes=100, ct_gc_interval_s=1.5,
    )  # fmt: skip
    nrec = NodeRecord(
        name="n1", netns="ciln-demo-n1", state_dir="/run/ciliary/n1",
        pin_dir="/sys/fs/bpf/ciliary/n1", socket="/run/ciliary/n1/agent.sock",
    )  # fmt: skip
    args = _parser().parse_args(manager._agent_argv(rec, nrec)[3:])
    assert args.tofqdns_min_ttl == 30
    assert args.tofqdns_idle_connection_grace_period == 5.0
    assert args.tofqdns_max_deferred_connection_deletes == 100
    assert args.conntrack_gc_interval == 1.5
    assert json.loads(args.tofqdns_pre_cache.read_text()) == answers
    cache = DNSCache()
    cache.restore(json.loads(args.tofqdns_pre_cache.read_text()))
    assert cache.lookup("a.io") == ["192.0.2.1"]


def test_the_cache_listing_in_json_is_a_pre_cache_file() -> None:
    at = datetime.fromtimestamp(1060, UTC)
    entries = [
        FQDNCacheEntry(fqdn="a.io", ip="192.0.2.1", expiration_time=at),
        FQDNCacheEntry(fqdn="a.io", ip="2001:db8::1", expiration_time=at),
    ]
    out = pre_cache(entries, now=1000.0)
    assert out == [
        {"fqdn": "a.io", "ips": ["192.0.2.1", "2001:db8::1"], "ttl": 60, "lookup-time": 1000}
    ]
    cache = DNSCache()
    cache.restore(out)
    assert cache.entries() == [("a.io", "192.0.2.1", 1060.0), ("a.io", "2001:db8::1", 1060.0)]
    # an IP kept for a connection (a zombie) stays one: pending deletion from the listing
    zombie = FQDNCacheEntry(fqdn="b.io", ip="192.0.2.2", expiration_time=at, source="connection")
    out = pre_cache([*entries, zombie], now=1000.0)
    assert out[1] == {
        "fqdn": "b.io", "ips": ["192.0.2.2"], "ttl": 0, "lookup-time": 1000, "source": "connection"
    }  # fmt: skip
    cache = DNSCache()
    cache.restore(out)
    assert cache.zombies.entries() == [("b.io", "192.0.2.2", 1000.0)] and len(cache.entries()) == 2
