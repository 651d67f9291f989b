"""``ciliary-cni``: the CNI plugin a container runtime executes to plug a pod into its node.

Why it is only a translator: every decision (addresses, identity, the veth pair, the BPF programs)
belongs to the node's agent, which persists it and survives restarts; the plugin holds no state.
It turns the runtime's ``CNI_*`` environment and stdin config into one agent API call and the
agent's answer (or failure) into the spec's result (or error) in the version the config asked
for. How each verb behaves:

* ADD: ``PUT /v1/endpoint``; returns once the agent reports the endpoint *ready* (programs
  attached), so a pod never runs unprotected. Requested addresses come from the ``ips``
  capability (``runtimeConfig.ips``) or ``args.cni.ips``; labels from ``args.cni.labels``; pod
  name and namespace from ``CNI_ARGS`` (``K8S_POD_NAME``/``K8S_POD_NAMESPACE``). The network
  name is recorded with the endpoint: a repeated ADD of the same (network, container, ifname)
  returns the existing endpoint's result (same addresses), while an ADD of that container
  interface by another network (or into another netns) is error 103, never a rebuild.
* DEL: idempotent and best effort, as the spec asks: an unknown attachment, a netns that is gone
  or a missing prevResult are all success. It removes only its own network's attachment. Only
  an unreachable agent fails (11, try again later), since then nothing could be cleaned up and
  the runtime will retry.
* CHECK (0.4.0+): the agent compares the netns and its endpoint record with prevResult.
* GC and STATUS (1.1.0): ``POST /v1/gc`` with the network name and the runtime's valid
  attachments: only endpoints that network made are collected; STATUS is the agent's health (a
  healthy agent can serve ADD).

Failures map to codes a runtime acts on: 11 (agent not running: retry), 100 (the agent refused:
its message), 101 (IPAM exhausted), 102 (no such network namespace), 103 (the container
interface is already attached otherwise), 50 (STATUS: not available).

The agent socket is ``/run/ciliary/<node>/agent.sock`` for ``"node"`` in the config, or
``"agent_socket"`` given explicitly.

Why only the standard library: a runtime execs the plugin for every verb of every pod, and in
Python the imports are most of an exec's cost (pydantic and httpx alone were ~180 ms of a 200 ms
ADD). The plugins import ``ciliary.cni.spec`` (hand-checked config and result) and
``ciliary.cni.agentapi`` (HTTP/1.1 over the agent's unix socket, bodies as plain JSON that the
agent validates), both stdlib-only; ``tests/unit/cni`` fails if pydantic, httpx, rich or yaml
creep back into an exec.
"""

from __future__ import annotations

import gc
import os
import sys

from ciliary.cni import cjson, spec
from ciliary.cni.agentapi import (
    AgentAPIError,
    AgentClient,
    AgentClientError,
    AgentDiscoveryError,
    AgentPermissionError,
    AgentUnavailableError,
    agent_socket_path,
    node_of,
)
from ciliary.cni.spec import (
    DNS,
    CNIError,
    ErrorCode,
    Interface,
    IPConfig,
    Result,
    Route,
)

TYPE_CHECKING = False  # mypy reads it as true: ``typing`` is for the type checker only
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType
    from typing import Any

    from ciliary.cni.spec import Env, NetConf

    Handler = Callable[[NetConf, Env], dict[str, Any] | None]

PLUGIN = "ciliary-cni"
INTERNAL_ERROR = 199
"""A bug in the plugin itself (an exception we did not expect); the traceback goes to stderr."""

DEFAULT_ROUTES = {4: "0.0.0.0/0", 6: "::/0"}
MAX_CONTAINER_ID = 256
"""What the agent's ``EndpointCreateRequest`` accepts; longer is the config's fault (error 7)."""


# --------------------------------------------------------------------------- the agent


def agent_socket(node: str | None, socket: str | None) -> str:
    """Explicit ``agent_socket`` wins; else the socket of the agent of ``node``."""
    if socket:
        return socket
    if not node:
        raise CNIError(
            ErrorCode.INVALID_CONFIG,
            'network config names no agent: set "node" (the node whose agent plugs the pod in) '
            'or "agent_socket"',
        )
    try:
        return agent_socket_path(node)
    except AgentDiscoveryError as err:
        raise CNIError(ErrorCode.INVALID_CONFIG, f'network config: "node": {err}') from err


def agent_error(err: AgentClientError, socket: str, unavailable: int) -> CNIError:
    """A client error as the :class:`CNIError` a runtime understands."""
    node = node_of(socket)
    later = "; try again later" if unavailable == ErrorCode.TRY_AGAIN_LATER else ""
    if isinstance(err, AgentPermissionError):
        return CNIError(
            ErrorCode.IO_FAILURE,
            f"permission denied on the ciliary agent socket {socket} (it is root-only)",
            str(err),
        )
    if isinstance(err, AgentUnavailableError):
        if err.timed_out:
            msg = f"ciliary agent of node {node} did not answer in time (socket {socket}){later}"
        else:
            msg = f"ciliary agent of node {node} is not running (socket {socket}){later}"
        return CNIError(unavailable, msg, str(err))
    if isinstance(err, AgentAPIError):
        details = f"HTTP {err.status}, kind {err.kind}"
        if unavailable == ErrorCode.NOT_AVAILABLE:
            return CNIError(
                unavailable, f"ciliary agent of node {node} is not healthy: {err}", details
            )
        if err.kind == "exhausted":
            return CNIError(
                ErrorCode.IPAM_EXHAUSTED, f"no free address on node {node}: {err.message}", details
            )
        if err.kind == "netns":
            return CNIError(ErrorCode.NETNS_NOT_FOUND, err.message, details)
        if err.kind == "attachment-conflict":
            return CNIError(ErrorCode.ATTACHMENT_CONFLICT, err.message, details)
        return CNIError(
            ErrorCode.AGENT_REFUSED,
            f"ciliary agent of node {node} refused the request: {err.message}",
            details,
        )
    return CNIError(ErrorCode.AGENT_REFUSED, str(err))  # protocol: an agent of another version?


class agent:  # noqa: N801 - used as ``with agent(socket) as client``
    """A client of the agent at ``socket``; every client error raised inside the block leaves it
    as the :class:`CNIError` a runtime understands (``unavailable``: the code for an agent that
    cannot be reached, 11 "try again later" or, for STATUS, 50)."""

    def __init__(
        self,
        socket: str,
        *,
        unavailable: int = ErrorCode.TRY_AGAIN_LATER,
        timeout: float = 30.0,
    ) -> None:
        self.socket = socket
        self.unavailable = unavailable
        self.timeout = timeout

    def __enter__(self) -> AgentClient:
        return AgentClient(self.socket, timeout=self.timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, AgentClientError):
            raise agent_error(exc, self.socket, self.unavailable) from exc


# --------------------------------------------------------------------------- the skeleton


def _peek_version(stdin: str) -> str | None:
    try:
        data = cjson.loads(stdin) if stdin.strip() else None
    except (ValueError, RecursionError):
        return None
    version = data.get("cniVersion") if isinstance(data, dict) else None
    return version if isinstance(version, str) else None


def run(
    environ: Mapping[str, str], stdin: str, handlers: Mapping[str, Handler], plugin: str = PLUGIN
) -> tuple[int, str]:
    """One invocation: (exit code, stdout). What Go plugins get from libcni's ``skel``.

    Order of checks: the command, then the environment the command needs (error 4), then the
    config (6 not JSON, 1 a version we do not speak, 7 invalid); an error is written in the
    config's version when we speak it.
    """
    raw: dict[str, Any] | None = None
    try:
        command = spec.parse_command(environ)
        if command == "VERSION":
            return 0, cjson.dumps(spec.version_info(_peek_version(stdin)))
        decode_error: CNIError | None = None
        try:
            raw = spec.decode_config(stdin)
        except CNIError as err:
            decode_error = err
        env = spec.parse_env(environ, command)
        if decode_error is not None:
            raise decode_error
        assert raw is not None
        conf = spec.parse_config(raw)
        handler = handlers.get(command)
        if handler is None:  # pragma: no cover - every plugin serves every command
            raise CNIError(ErrorCode.INVALID_ENV, f"{plugin} does not implement {command}")
        result = handler(conf, env)
        return 0, cjson.dumps(result) if result is not None else ""
    except CNIError as err:
        return 1, err.to_json(spec.error_version(raw))
    except Exception as exc:
        import traceback  # noqa: PLC0415 - only a bug pays for it

        traceback.print_exc(file=sys.stderr)
        bug = CNIError(INTERNAL_ERROR, f"{plugin} failed unexpectedly: {exc!r}")
        return 1, bug.to_json(spec.error_version(raw))


def main_for(handlers: Mapping[str, Handler], plugin: str) -> int:
    """The executable: stdin and environment in, the answer on stdout, the exit code back.
    (In process, call :func:`run`: this one prepares the interpreter's exit.)"""
    stdin = ""
    if sys.stdin is not None and not sys.stdin.isatty():
        stdin = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    code, out = run(os.environ, stdin, handlers, plugin)
    if out:
        sys.stdout.write(out + "\n")
        sys.stdout.flush()
    # The process ends next, and the interpreter's exit would run a full garbage collection over
    # every object the imports made: ~3 ms of the runtime's wait for a result that is already
    # written. Frozen objects are left out of it; nothing of ours needs the collector to finalize
    # it (the socket is closed, stdout flushed, and the exit still flushes and closes as usual).
    gc.freeze()
    return code


# --------------------------------------------------------------------------- the verbs


def _socket(conf: NetConf) -> str:
    return agent_socket(conf.node, conf.agent_socket)


def cmd_add(conf: NetConf, env: Env) -> dict[str, Any]:
    version = conf.version
    if conf.ipam is not None and conf.ipam.type not in (None, "ciliary-ipam"):
        raise CNIError(
            ErrorCode.UNSUPPORTED_FIELD,
            f"ipam.type {conf.ipam.type!r} is not supported: {PLUGIN} allocates addresses "
            "through its agent (leave ipam.type out, or chain another main plugin)",
        )
    socket = _socket(conf)
    requested = conf.requested_ips()
    spec.check_netns(env.netns)
    if len(env.container_id) > MAX_CONTAINER_ID:
        raise CNIError(
            ErrorCode.INVALID_CONFIG,
            f"invalid request: container_id: String should have at most {MAX_CONTAINER_ID} "
            "characters",
        )
    req = {  # an EndpointCreateRequest
        "container_id": env.container_id,
        "netns": env.netns,
        "ifname": env.ifname,
        "pod_name": env.arg("K8S_POD_NAME"),
        "namespace": env.arg("K8S_POD_NAMESPACE") or "default",
        "labels": conf.labels(),
        "ipv4": next((str(a) for a in requested if a.version == 4), None),
        "ipv6": next((str(a) for a in requested if a.version == 6), None),
        "pools": conf.ipam.pools if conf.ipam else None,
        "mtu": conf.mtu,
        "network": conf.name,
    }
    with agent(socket) as client:
        ep = client.create_endpoint(req)
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for family, addr, gateway, plen in (
        (4, ep["ipv4"], ep["ipv4_gateway"], 32),
        (6, ep["ipv6"], ep["ipv6_gateway"], 128),
    ):
        if addr:
            ips.append(IPConfig(address=f"{addr}/{plen}", gateway=gateway, interface=1))
            routes.append(Route(dst=DEFAULT_ROUTES[family], gw=gateway))
    result = Result(
        interfaces=[
            Interface(name=ep["lxc"], mac=ep["node_mac"], mtu=ep["mtu"]),
            Interface(name=ep["ifname"], mac=ep["mac"], sandbox=env.netns, mtu=ep["mtu"]),
        ],
        ips=ips,
        routes=routes,
        dns=conf.dns or DNS(),
    )
    return result.to_version(version)


def cmd_del(conf: NetConf, env: Env) -> None:
    with agent(_socket(conf)) as client:
        mine = [
            ep["id"]
            for ep in client.endpoints()
            if ep["container_id"] == env.container_id
            and ep["ifname"] == env.ifname
            # another network's attachment of this container interface is not ours to delete
            # (one without a network predates the record: DEL by the attachment, as before)
            and ep.get("network") in (None, conf.name)
        ]
        for endpoint_id in mine:
            try:
                client.delete_endpoint(endpoint_id)
            except AgentAPIError as err:
                if err.status != 404:  # 404: deleted meanwhile, which is what we wanted
                    raise
        if not mine:
            _release_leftovers(client, env.owner)


def _release_leftovers(client: AgentClient, owner: str) -> None:
    """No endpoint for ``owner``: still release addresses a crashed ADD may have left behind."""
    try:
        client.ipam_release(owner)
    except AgentAPIError:
        return  # nothing held, or not ours to release: nothing to clean up either way


def cmd_check(conf: NetConf, env: Env) -> None:
    spec.require_version(conf.version, "0.4.0", "CHECK")
    prev = conf.prev_result()
    if prev is None:
        raise CNIError(
            ErrorCode.INVALID_CONFIG, "CHECK needs prevResult (the result of the ADD to check)"
        )
    socket = _socket(conf)
    spec.check_netns(env.netns)
    req = {  # an EndpointCheckRequest
        "container_id": env.container_id,
        "ifname": env.ifname,
        "netns": env.netns,
        "addresses": prev.sandbox_addresses(env.ifname),
        "network": conf.name,
    }
    with agent(socket) as client:
        resp = client.check_endpoint(req)
    if not resp["ok"]:
        # every problem once, in ``msg`` only: runtimes print ``msg; details`` (libcni's
        # Error()), so repeating them as details would print each one twice
        problems: list[str] = resp["problems"]
        raise CNIError(
            ErrorCode.AGENT_REFUSED,
            f"CHECK of {env.owner} failed: {'; '.join(problems) or 'the agent reports a problem'}",
        )


def gc_request(conf: NetConf, scope: str) -> dict[str, Any]:
    """The ``GCRequest`` of a GC: the valid attachments (error 7 when the config has none)."""
    spec.require_version(conf.version, "1.1.0", "GC")
    valid = conf.attachments()
    if valid is None:
        raise CNIError(
            ErrorCode.INVALID_CONFIG,
            f"GC needs {spec.VALID_ATTACHMENTS_KEY} (the attachments to keep) in the config",
        )
    return {
        "valid_attachments": [{"containerID": a.containerID, "ifname": a.ifname} for a in valid],
        "network": conf.name,
        "scope": scope,
    }


def cmd_gc(conf: NetConf, env: Env) -> None:
    req = gc_request(conf, "endpoints")
    with agent(_socket(conf)) as client:
        resp = client.gc(req)
    removed, released = resp["endpoints_removed"], resp["addresses_released"]
    if removed or released:
        print(
            f"{PLUGIN}: GC removed endpoints {removed or '[]'} and released "
            f"{', '.join(map(str, released)) or 'no addresses'}",
            file=sys.stderr,
        )


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
