"""``ciliary-ipam``: a CNI *IPAM* plugin backed by the node agent's allocator.

Why: with it any main plugin that delegates addressing (the reference ``bridge``, ``macvlan``,
``ptp``, ...) draws from the same pools, blocks and bookkeeping as ciliary's own endpoints, so
one ``GET /v1/ipam`` shows every address on the node and nothing is handed out twice. Allocations
are owned by the attachment, ``<CNI_CONTAINERID>/<CNI_IFNAME>``, and marked ``ipam-plugin``.

* ADD: ``POST /v1/ipam`` (pools from ``ipam.pools``, specific addresses from the ``ips``
  capability or ``args.cni.ips``) and an IPAM result: no interfaces, each address with the
  prefix length of the pool block it came from and the block's gateway, a default route per
  family via that gateway (or ``ipam.routes`` when the config gives them), ``ipam.dns``.
* DEL: ``DELETE /v1/ipam?owner=...``, idempotent (nothing held is success).
* CHECK (0.4.0+): the owner still holds the addresses of prevResult.
* GC (1.1.0): ``POST /v1/gc`` in the ``ipam-plugin`` scope: releases ``ipam-plugin`` allocations
  whose owner is not a valid attachment, in one step (never an endpoint's: those belong to
  ``ciliary-cni``). STATUS: the agent's health.

The agent is found through the IPAM section (``ipam.node`` / ``ipam.agent_socket``), falling
back to the top-level keys, so a main plugin's config can carry it either way.
"""

from __future__ import annotations

import sys

from ciliary.cni import spec
from ciliary.cni.agentapi import AgentAPIError
from ciliary.cni.main import DEFAULT_ROUTES, agent, agent_socket, gc_request, main_for
from ciliary.cni.spec import (
    DNS,
    CNIError,
    ErrorCode,
    IPAMConfig,
    IPConfig,
    Result,
    Route,
)

TYPE_CHECKING = False  # mypy reads it as true: ``typing`` is for the type checker only
if TYPE_CHECKING:
    from typing import Any

    from ciliary.cni.main import Handler
    from ciliary.cni.spec import Env, NetConf

PLUGIN = "ciliary-ipam"


def _ipam(conf: NetConf) -> IPAMConfig:
    return conf.ipam or IPAMConfig()


def _socket(conf: NetConf) -> str:
    ipam = _ipam(conf)
    if ipam.agent_socket or ipam.node:
        return agent_socket(ipam.node, ipam.agent_socket)
    return agent_socket(conf.node, conf.agent_socket)


def cmd_add(conf: NetConf, env: Env) -> dict[str, Any]:
    ipam = _ipam(conf)
    socket = _socket(conf)
    req = {  # an IPAMAllocateRequest
        "owner": env.owner,
        "kind": "ipam-plugin",
        "families": None,
        "requested": [str(a) for a in conf.requested_ips()],
        "pools": ipam.pools,
    }
    with agent(socket) as client:
        allocations = client.ipam_allocate(req)
    if not allocations:
        raise CNIError(ErrorCode.AGENT_REFUSED, f"the agent allocated no address to {env.owner}")
    ips = [
        IPConfig(address=f"{a['address']}/{a['prefix_len']}", gateway=a["gateway"])
        for a in allocations
    ]
    if ipam.routes is not None:
        routes = list(ipam.routes)
    else:
        routes = [
            Route(dst=DEFAULT_ROUTES[a["family"]], gw=a["gateway"])
            for a in allocations
            if a["gateway"] is not None
        ]
    result = Result(ips=ips, routes=routes, dns=ipam.dns or DNS())
    return result.to_version(conf.version, ipam=True)


def cmd_del(conf: NetConf, env: Env) -> None:
    with agent(_socket(conf)) as client:
        try:
            client.ipam_release(env.owner)
        except AgentAPIError as err:
            if err.status != 404:  # nothing held: already released, which is what we wanted
                raise


def cmd_check(conf: NetConf, env: Env) -> None:
    from ipaddress import ip_address  # noqa: PLC0415 - CHECK only (see spec's imports)

    spec.require_version(conf.version, "0.4.0", "CHECK")
    prev = conf.prev_result()
    with agent(_socket(conf)) as client:
        allocations = client.ipam_list()
    held = {ip_address(a["address"]) for a in allocations if a["owner"] == env.owner}
    if not held:
        raise CNIError(
            ErrorCode.AGENT_REFUSED, f"CHECK of {env.owner} failed: it holds no address any more"
        )
    if prev is not None:
        lost = [ipc.address for ipc in prev.ips if ipc.ip not in held]
        if lost:
            raise CNIError(
                ErrorCode.AGENT_REFUSED,
                f"CHECK of {env.owner} failed: {', '.join(lost)} no longer allocated to it",
            )


def cmd_gc(conf: NetConf, env: Env) -> None:
    """Only ``ipam-plugin`` allocations go (the agent's ``ipam-plugin`` GC scope): endpoints and
    their addresses belong to ``ciliary-cni``'s network and its own GC."""
    req = gc_request(conf, "ipam-plugin")
    with agent(_socket(conf)) as client:
        released = client.gc(req)["addresses_released"]
    if released:
        print(f"{PLUGIN}: GC released {', '.join(map(str, released))}", file=sys.stderr)


def cmd_status(conf: NetConf, env: Env) -> None:
    spec.require_version(conf.version, "1.1.0", "STATUS")
    with agent(_socket(conf), unavailable=ErrorCode.NOT_AVAILABLE, timeout=10.0) as client:
        client.healthz()


HANDLERS: dict[str, Handler] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "GC": cmd_gc,
    "STATUS": cmd_status,
}


def main() -> int:
    return main_for(HANDLERS, PLUGIN)


if __name__ == "__main__":
    sys.exit(main())
