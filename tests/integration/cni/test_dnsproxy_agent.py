"""The agent runs its DNS proxy (agent/daemon.py, agent/dnsproxy.py): a real standalone agent in a
node netns listens on ``--tofqdns-proxy-port`` for UDP and TCP in that netns, and answers a query
that was not redirected to it (sent to the proxy's own address: no original destination to
forward to) with the reject code of ``--tofqdns-dns-reject-response-code``, without forwarding."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from .conftest import PYTHON, NodeAgent, node_agent

pytestmark = pytest.mark.timeout(120)

PORT = 10999


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    flags = ("--tofqdns-proxy-port", str(PORT), "--tofqdns-dns-reject-response-code", "nameError")
    with node_agent(tmp_path_factory.mktemp("dnsproxy-agent"), "10.233.0.0/24", None, flags) as a:
        yield a


def query(agent: NodeAgent, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", agent.netns, PYTHON, "-m", "ciliary.workload.main", "dns-query",
         "partner.example.com", "--server", "127.0.0.1", "--port", str(PORT), *flags],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip


def test_the_agent_serves_its_dns_proxy_port(agent: NodeAgent) -> None:
    for flags in ((), ("--tcp",)):
        res = query(agent, "--expect-rcode", "NXDOMAIN", *flags)
        assert res.returncode == 0, res.stdout + res.stderr
    assert f"DNS proxy listening on port {PORT}" in agent.log.read_text()
