"""``ciliary-cni``: CNI plugin (spec 1.1.0 result format) over the local agent's API.

Config on stdin, ``CNI_*`` in the environment, result or error JSON on stdout. ADD returns only
once the agent reports the endpoint ready (its programs attached), so a pod never runs
unprotected; DEL is idempotent and succeeds when the endpoint is already gone. The agent socket is
``/run/ciliary/<node>/agent.sock`` with ``node`` from the network config (``"node"``), or
``agent_socket`` given explicitly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ciliary.client.agent import AgentAPIError, AgentClient, AgentUnavailableError
from ciliary.core.models import EndpointCreateRequest

SUPPORTED = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
E_INCOMPATIBLE, E_INVALID_ENV, E_DECODE, E_INVALID_CONFIG, E_TRY_AGAIN = 1, 4, 6, 7, 11
E_UNAVAILABLE, E_AGENT = 50, 100


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _env(name: str, required: bool = True) -> str:
    value = os.environ.get(name, "")
    if required and not value:
        raise CNIError(E_INVALID_ENV, f"missing environment variable {name}")
    return value


def _socket(conf: dict[str, Any]) -> Path:
    if isinstance(conf.get("agent_socket"), str):
        return Path(conf["agent_socket"])
    node = conf.get("node")
    if not isinstance(node, str) or not node:
        raise CNIError(E_INVALID_CONFIG, 'network config needs "node" or "agent_socket"')
    return Path("/run/ciliary") / node / "agent.sock"


def _cni_args() -> dict[str, str]:
    out = {}
    for part in os.environ.get("CNI_ARGS", "").split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value
    return out


def _add(conf: dict[str, Any], version: str) -> dict[str, Any]:
    args = _cni_args()
    req = EndpointCreateRequest(
        container_id=_env("CNI_CONTAINERID"),
        netns=_env("CNI_NETNS"),
        ifname=_env("CNI_IFNAME"),
        pod_name=args.get("K8S_POD_NAME", ""),
        namespace=args.get("K8S_POD_NAMESPACE", "default"),
        labels=dict(conf.get("labels") or {}),
    )
    with AgentClient(_socket(conf)) as cl:
        ep = cl.create_endpoint(req)
    ips = []
    for addr, gw in ((ep.ipv4, "/32"), (ep.ipv6, "/128")):
        if addr:
            ips.append({"address": addr + gw, "interface": 1})
    return {
        "cniVersion": version,
        "interfaces": [
            {"name": ep.lxc, "mac": ep.node_mac},
            {"name": ep.ifname, "mac": ep.mac, "sandbox": ep.netns},
        ],
        "ips": ips,
        "routes": [{"dst": "0.0.0.0/0"}] * bool(ep.ipv4) + [{"dst": "::/0"}] * bool(ep.ipv6),
        "dns": conf.get("dns") or {},
    }


def _del(conf: dict[str, Any]) -> None:
    container = _env("CNI_CONTAINERID")
    try:
        with AgentClient(_socket(conf)) as cl:
            cl.delete_endpoint_by_container(container)
    except AgentAPIError as err:
        if err.status != 404:
            raise


def _check(conf: dict[str, Any]) -> None:
    container = _env("CNI_CONTAINERID")
    with AgentClient(_socket(conf)) as cl:
        eps = [e for e in cl.endpoints() if e.container_id == container]
    if not eps or eps[0].state.value != "ready":
        raise CNIError(E_AGENT, f"endpoint of container {container} is not ready on this node")


def run(stdin: str) -> tuple[int, dict[str, Any] | None]:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}
    try:
        conf = json.loads(stdin) if stdin.strip() else {}
    except ValueError as err:
        raise CNIError(E_DECODE, f"network config is not valid JSON: {err}") from err
    if not isinstance(conf, dict):
        raise CNIError(E_DECODE, "network config must be a JSON object")
    version = str(conf.get("cniVersion", ""))
    if version not in SUPPORTED:
        raise CNIError(E_INCOMPATIBLE, f"unsupported cniVersion {version!r}", ", ".join(SUPPORTED))
    if command == "ADD":
        return 0, _add(conf, version)
    if command == "DEL":
        _del(conf)
        return 0, None
    if command == "CHECK":
        _check(conf)
        return 0, None
    if command == "STATUS":
        with AgentClient(_socket(conf)) as cl:
            cl.healthz()
        return 0, None
    raise CNIError(E_INVALID_ENV, f"unknown CNI_COMMAND {command!r}")


def main() -> int:
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    version = "1.1.0"
    try:
        code, result = run(stdin)
        if result is not None:
            print(json.dumps(result))
        return code
    except CNIError as err:
        payload = {"cniVersion": version, "code": err.code, "msg": err.msg, "details": err.details}
    except AgentUnavailableError as err:
        payload = {"cniVersion": version, "code": E_TRY_AGAIN, "msg": str(err), "details": ""}
    except AgentAPIError as err:
        payload = {"cniVersion": version, "code": E_AGENT, "msg": str(err), "details": ""}
    except ValueError as err:  # pydantic validation of env-derived fields
        payload = {
            "cniVersion": version,
            "code": E_INVALID_ENV,
            "msg": str(err).splitlines()[0],
            "details": "",
        }
    print(json.dumps(payload))
    return 1


if __name__ == "__main__":
    sys.exit(main())
