"""The agent's DNS cache survives a restart (agent/daemon.py ``fqdn-cache.json``): answers it
had (here from ``--tofqdns-pre-cache``; in a cluster from its DNS proxy) are saved at exit and
restored at start before any policy is computed, so toFQDNs rules allow the same IPs at once;
answers that expired meanwhile are not restored."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import node_agent

pytestmark = pytest.mark.timeout(120)


def test_the_dns_cache_survives_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("fqdn-restore")
    pre_cache = tmp / "pre-cache.json"
    now = int(time.time())
    pre_cache.write_text(json.dumps([
        {"fqdn": "kept.example.com", "ips": ["192.0.2.1"], "ttl": 600, "lookup-time": now},
        {"fqdn": "brief.example.com", "ips": ["192.0.2.2"], "ttl": 3, "lookup-time": now},
    ]))  # fmt: skip
    with node_agent(tmp, "10.234.0.0/24", None, ("--tofqdns-pre-cache", str(pre_cache))) as agent:
        with agent.client() as cl:  # brief.example.com may have expired already
            assert "kept.example.com" in {e.fqdn for e in cl.fqdn_cache()}
        agent.stop()
        time.sleep(max(0.0, now + 4 - time.time()))  # brief.example.com expires meanwhile
        agent.extra_args = ()  # no pre-cache: what it knows now comes from its own state
        agent.start()
        with agent.client() as cl:
            entries = cl.fqdn_cache()
        assert [(e.fqdn, e.ip) for e in entries] == [("kept.example.com", "192.0.2.1")]
        assert abs(entries[0].expiration_time.timestamp() - (now + 600)) < 2
        assert "DNS cache: 1 names restored" in agent.log.read_text()
