"""Synchronous client of one agent's REST API on its root-only unix socket.

Why a thin hand-written client: the API is small, its bodies are the pydantic models of
``ciliary.core.models`` (validated on the way in, so a drifting agent fails loudly here rather than
deep in a table renderer), and the failure modes that matter to a user are few and must be told
apart: the socket is not there (no agent for that node), it is there but refuses connections (the
agent died and left it), it is not ours to open (root-only), the agent is too slow, or the agent
answered with an ``ErrorResponse``. Each of these becomes one exception type with a one-line
message naming the socket.

Socket discovery mirrors how the lab lays nodes out: ``<run dir>/<node>/agent.sock`` with the run
dir ``/run/ciliary`` (``CILIARY_RUN_DIR`` overrides it, for tests and unprivileged experiments).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import urllib.parse
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from ciliary.core.models import (
    API_PREFIX,
    CheckResponse,
    CTEntry,
    Endpoint,
    EndpointCheckRequest,
    EndpointCreateRequest,
    EndpointPolicyStatus,
    ErrorResponse,
    FQDNCacheEntry,
    GCRequest,
    GCResponse,
    IdentityInfo,
    IPAMAllocateRequest,
    IPAMAllocateResponse,
    IPAMListing,
    IPCacheEntry,
    LBMapEntry,
    MaglevTable,
    MonitorEvent,
    NATEntry,
    NodeInfo,
    PolicyChangeResponse,
    PolicyImportRequest,
    PolicyListResponse,
    ServiceFrontend,
    ServiceInfo,
    StatusResponse,
    TraceRequest,
    TraceResponse,
)

DEFAULT_RUN_DIR = Path("/run/ciliary")
RUN_DIR_ENV = "CILIARY_RUN_DIR"
SOCKET_ENV = "CILIARY_AGENT_SOCKET"
SOCKET_NAME = "agent.sock"

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

_T = TypeVar("_T")

_ENDPOINT = TypeAdapter(Endpoint)
_STATUS = TypeAdapter(StatusResponse)
_ENDPOINTS = TypeAdapter(list[Endpoint])
_CT = TypeAdapter(list[CTEntry])
_IPCACHE = TypeAdapter(list[IPCacheEntry])
_NAT = TypeAdapter(list[NATEntry])
_HEALTHZ = TypeAdapter(dict[str, str])
_IPAM_ALLOC = TypeAdapter(IPAMAllocateResponse)
_IPAM_LIST = TypeAdapter(IPAMListing)
_GC = TypeAdapter(GCResponse)
_CHECK = TypeAdapter(CheckResponse)
_POLICY_CHANGE = TypeAdapter(PolicyChangeResponse)
_POLICY_LIST = TypeAdapter(PolicyListResponse)
_TRACE = TypeAdapter(TraceResponse)
_EP_POLICY = TypeAdapter(EndpointPolicyStatus)
_IDENTITY = TypeAdapter(IdentityInfo)
_IDENTITIES = TypeAdapter(list[IdentityInfo])
_SERVICES = TypeAdapter(list[ServiceInfo])
_FQDN_CACHE = TypeAdapter(list[FQDNCacheEntry])
_FRONTENDS = TypeAdapter(list[ServiceFrontend])
_LB = TypeAdapter(list[LBMapEntry])
_MAGLEV = TypeAdapter(list[MaglevTable])
_NODES = TypeAdapter(list[NodeInfo])


class AgentClientError(Exception):
    """Base of every error this package raises; ``str()`` is a one-line user-facing message."""


class AgentUnavailableError(AgentClientError):
    """The agent could not be reached: no socket, connection refused, broken stream or timeout."""

    def __init__(self, message: str, socket_path: Path | None = None) -> None:
        super().__init__(message)
        self.socket_path = socket_path


class AgentPermissionError(AgentUnavailableError):
    """The socket (or the run dir) is root-only and we are not allowed to open it."""


class AgentDiscoveryError(AgentClientError):
    """No ``--node`` was given and the running agents do not designate exactly one socket."""


class AgentProtocolError(AgentClientError):
    """The agent answered with a body that is not what the API promises."""


class AgentAPIError(AgentClientError):
    """The agent answered with an error status and (normally) an ``ErrorResponse`` body."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        text = message if status < 500 else f"agent failed (HTTP {status}, {kind}): {message}"
        super().__init__(text)


# --------------------------------------------------------------------------- socket discovery


def run_dir() -> Path:
    """Root of the per-node agent directories (``/run/ciliary`` unless ``CILIARY_RUN_DIR``)."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else DEFAULT_RUN_DIR


def agent_socket_path(node: str) -> Path:
    """The socket the agent of ``node`` serves on."""
    if not _NODE_NAME.match(node):
        raise AgentDiscoveryError(f"invalid node name {node!r}")
    return run_dir() / node / SOCKET_NAME


def discover_agent_sockets() -> dict[str, Path]:
    """Node name -> socket, for every ``<run dir>/*/agent.sock`` present (running or stale)."""
    root = run_dir()
    try:
        children = sorted(root.iterdir())
    except FileNotFoundError:
        return {}
    except PermissionError as exc:
        raise AgentPermissionError(
            f"permission denied listing {root}: agent sockets are root-only", None
        ) from exc
    found: dict[str, Path] = {}
    denied: list[str] = []
    for child in children:
        sock = child / SOCKET_NAME
        try:
            if sock.is_socket():
                found[child.name] = sock
        except PermissionError:
            denied.append(child.name)
        except OSError:
            continue
    if denied:
        raise AgentPermissionError(
            f"permission denied looking for agent sockets in {root} "
            f"({', '.join(denied)}): they are root-only",
            None,
        )
    return found


def resolve_agent_socket(node: str | None = None) -> Path:
    """Which socket to talk to.

    An explicit ``node`` wins, then ``$CILIARY_AGENT_SOCKET``, then the only agent socket under
    the run dir; anything else is ambiguous and raises :class:`AgentDiscoveryError` naming the
    nodes found so the user can pick one with ``--node``.
    """
    if node:
        return agent_socket_path(node)
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    found = discover_agent_sockets()
    if len(found) == 1:
        return next(iter(found.values()))
    pattern = run_dir() / "*" / SOCKET_NAME
    if not found:
        raise AgentDiscoveryError(
            f"no ciliary agent is running (no socket matches {pattern}); "
            "start one with `sudo ciliary lab up` or pass --node NAME"
        )
    names = ", ".join(found)
    raise AgentDiscoveryError(
        f"{len(found)} ciliary agents are running (nodes: {names}); pick one with --node NAME"
    )


# --------------------------------------------------------------------------- the client


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError at the root of an httpx/httpcore exception chain, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class AgentClient:
    """REST client of one agent. Not thread-safe; cheap to create, close it when done."""

    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)),
            base_url="http://agent",
            timeout=httpx.Timeout(timeout),
        )

    # -- lifecycle

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AgentClient({str(self.socket_path)!r})"

    # -- API

    def healthz(self) -> dict[str, str]:
        return self._get(_HEALTHZ, "/healthz")

    def status(self) -> StatusResponse:
        return self._get(_STATUS, "/status")

    def endpoints(self) -> list[Endpoint]:
        return self._get(_ENDPOINTS, "/endpoint")

    def endpoint(self, id: int) -> Endpoint:
        return self._get(_ENDPOINT, f"/endpoint/{int(id)}")

    def create_endpoint(
        self, req: EndpointCreateRequest, *, timeout: float | None = None
    ) -> Endpoint:
        """Plug a pod in; returns once the agent reports the endpoint ready."""
        resp = self._request(
            "PUT", "/endpoint", json_body=req.model_dump(mode="json"), timeout=timeout
        )
        return self._parse(resp, _ENDPOINT)

    def delete_endpoint(self, id: int) -> Endpoint:
        resp = self._request("DELETE", f"/endpoint/{int(id)}")
        return self._parse(resp, _ENDPOINT)

    def delete_endpoint_by_container(self, container_id: str) -> Endpoint:
        resp = self._request("DELETE", "/endpoint", params={"container_id": container_id})
        return self._parse(resp, _ENDPOINT)

    def ipam_allocate(self, req: IPAMAllocateRequest) -> IPAMAllocateResponse:
        """Addresses for one attachment (all families asked for, or nothing)."""
        resp = self._request("POST", "/ipam", json_body=req.model_dump(mode="json"))
        return self._parse(resp, _IPAM_ALLOC)

    def ipam_release(self, owner: str) -> IPAMAllocateResponse:
        """Release what ``owner`` (``<container id>/<ifname>``) holds; empty when nothing."""
        resp = self._request("DELETE", "/ipam", params={"owner": owner})
        return self._parse(resp, _IPAM_ALLOC)

    def ipam_list(self) -> IPAMListing:
        return self._get(_IPAM_LIST, "/ipam")

    def ipam_gc(self) -> IPAMAllocateResponse:
        """Release addresses whose owner no longer exists (orphans of crashed ADDs)."""
        return self._parse(self._request("POST", "/ipam/gc"), _IPAM_ALLOC)

    def gc(self, req: GCRequest) -> GCResponse:
        """CNI GC: release every attachment not in ``req.valid_attachments``."""
        body = req.model_dump(mode="json", by_alias=True)
        return self._parse(self._request("POST", "/gc", json_body=body), _GC)

    def check_endpoint(self, req: EndpointCheckRequest) -> CheckResponse:
        """CNI CHECK: does the attachment still look as ADD made it?"""
        resp = self._request("POST", "/endpoint/check", json_body=req.model_dump(mode="json"))
        return self._parse(resp, _CHECK)

    def ct_list(self) -> list[CTEntry]:
        return self._get(_CT, "/map/ct")

    def nat_list(self) -> list[NATEntry]:
        return self._get(_NAT, "/map/nat")

    def ipcache_list(self) -> list[IPCacheEntry]:
        return self._get(_IPCACHE, "/map/ipcache")

    def policy_import(
        self, text: str, filename: str = "<stdin>", *, timeout: float | None = None
    ) -> PolicyChangeResponse:
        """Import policy YAML (all documents, or nothing: a parse problem is a 400 whose
        :class:`AgentAPIError` has ``kind == "policy"`` and the first problem as message)."""
        body = PolicyImportRequest(text=text, filename=filename).model_dump(mode="json")
        resp = self._request("PUT", "/policy", json_body=body, timeout=timeout)
        return self._parse(resp, _POLICY_CHANGE)

    def policy_list(self) -> PolicyListResponse:
        return self._get(_POLICY_LIST, "/policy")

    def policy_delete(
        self, keys: list[str] | None = None, all: bool = False, *, timeout: float | None = None
    ) -> PolicyChangeResponse:
        """Delete the policies ``keys`` (``kind/ns/name``), or every policy with ``all``."""
        if all == bool(keys):
            raise ValueError("policy_delete takes either keys or all=True")
        query = [("all", "true")] if all else [("key", k) for k in keys or ()]
        path = "/policy?" + urllib.parse.urlencode(query)  # ``key`` repeats: not a dict
        return self._parse(self._request("DELETE", path, timeout=timeout), _POLICY_CHANGE)

    def policy_trace(self, req: TraceRequest) -> TraceResponse:
        """Would this flow be allowed, and by which rule (both halves)?"""
        resp = self._request("POST", "/policy/trace", json_body=req.model_dump(mode="json"))
        return self._parse(resp, _TRACE)

    def endpoint_policy(self, ep_id: int) -> EndpointPolicyStatus:
        """The policy realized for one endpoint: enforcement, policies, map entries."""
        return self._get(_EP_POLICY, f"/endpoint/{int(ep_id)}/policy")

    def identities(self) -> list[IdentityInfo]:
        return self._get(_IDENTITIES, "/identity")

    def identity(self, id: int) -> IdentityInfo:
        return self._get(_IDENTITY, f"/identity/{int(id)}")

    def fqdn_cache(self) -> list[FQDNCacheEntry]:
        """The DNS cache toFQDNs rules select IPs from."""
        return self._get(_FQDN_CACHE, "/fqdn/cache")

    def services(self) -> list[ServiceInfo]:
        """The agent's service cache (Services with their EndpointSlices' backends)."""
        return self._get(_SERVICES, "/service")

    def service_frontends(self) -> list[ServiceFrontend]:
        """The frontends in the BPF service maps, with ids and backends."""
        return self._get(_FRONTENDS, "/service/frontend")

    def lb_list(self) -> list[LBMapEntry]:
        """Every slot of the BPF service maps."""
        return self._get(_LB, "/map/lb")

    def maglev_list(self) -> list[MaglevTable]:
        """Every Maglev frontend's lookup table."""
        return self._get(_MAGLEV, "/map/lb/maglev")

    def cluster_nodes(self) -> list[NodeInfo]:
        return self._get(_NODES, "/cluster/nodes")

    def monitor(self, type: str | None = None) -> Generator[MonitorEvent, None, None]:
        """Live datapath events, ``type`` ``"trace"`` or ``"drop"`` (None: both).

        The stream has no read timeout (a quiet datapath is normal); it only ends when the
        caller stops iterating (the connection is then closed) or the agent goes away, which
        raises :class:`AgentUnavailableError`.
        """
        params = {"type": type} if type else None
        timeout = httpx.Timeout(self.timeout, read=None)
        self._probe()
        with (
            self._translate_errors(),
            self._http.stream(
                "GET", API_PREFIX + "/monitor", params=params, timeout=timeout
            ) as resp,
        ):
            if resp.status_code >= 400:
                resp.read()
                raise self._api_error(resp)
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                try:
                    event = MonitorEvent.model_validate_json(line)
                except ValidationError as exc:
                    raise AgentProtocolError(
                        f"agent at {self.socket_path} sent an invalid monitor event: "
                        f"{_first_error(exc)}"
                    ) from exc
                yield event
        raise AgentUnavailableError(
            f"agent at {self.socket_path} closed the monitor stream (did it exit?)",
            self.socket_path,
        )

    # -- plumbing

    def _get(self, adapter: TypeAdapter[_T], path: str) -> _T:
        return self._parse(self._request("GET", path), adapter)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        kwargs: dict[str, Any] = {}
        if json_body is not None:
            kwargs["json"] = json_body
        if params:
            kwargs["params"] = params
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout)
        self._probe()
        with self._translate_errors(timeout):
            resp = self._http.request(method, API_PREFIX + path, **kwargs)
        if resp.status_code >= 400:
            raise self._api_error(resp)
        return resp

    def _parse(self, resp: httpx.Response, adapter: TypeAdapter[_T]) -> _T:
        try:
            return adapter.validate_json(resp.content)
        except ValidationError as exc:
            raise AgentProtocolError(
                f"agent at {self.socket_path} answered {resp.request.method} "
                f"{resp.request.url.path} with an unexpected body: {_first_error(exc)}"
            ) from exc

    def _api_error(self, resp: httpx.Response) -> AgentAPIError:
        try:
            err = ErrorResponse.model_validate_json(resp.content)
        except ValidationError:
            text = resp.text.strip().splitlines()
            message = text[0] if text else resp.reason_phrase or "no details"
            return AgentAPIError(resp.status_code, "http", message)
        return AgentAPIError(resp.status_code, err.kind, err.error)

    @contextlib.contextmanager
    def _translate_errors(self, timeout: float | None = None) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            limit = self.timeout if timeout is None else timeout
            raise AgentUnavailableError(
                f"agent at {self.socket_path} did not answer within {limit:g}s "
                f"({type(exc).__name__}); is it stuck?",
                self.socket_path,
            ) from exc
        except httpx.ConnectError as exc:
            raise self._connect_failure(exc) from exc
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise AgentUnavailableError(
                f"connection to the agent at {self.socket_path} broke ({detail}); "
                "did the agent exit?",
                self.socket_path,
            ) from exc

    def _probe(self) -> None:
        """Fail early, and cleanly, when nothing listens on the socket.

        httpcore leaks the socket object of a failed unix-socket connect (a ResourceWarning when
        it is collected, fatal under ``-W error``), and a dead agent is exactly when callers
        poll; a plain connect that we close ourselves costs microseconds and tells us which of
        missing / refused / forbidden it is.
        """
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(self.timeout)
            probe.connect(str(self.socket_path))
        except TimeoutError as exc:
            raise AgentUnavailableError(
                f"agent at {self.socket_path} did not accept a connection within "
                f"{self.timeout:g}s; is it stuck?",
                self.socket_path,
            ) from exc
        except OSError as exc:
            raise self._connect_failure(exc) from exc
        finally:
            probe.close()

    def _connect_failure(self, exc: BaseException) -> AgentUnavailableError:
        sock = self.socket_path
        cause = _os_error(exc)
        try:
            exists = sock.exists()
            accessible = os.access(sock, os.R_OK | os.W_OK)
        except OSError:
            exists, accessible = True, False
        if isinstance(cause, PermissionError) or (exists and not accessible):
            return AgentPermissionError(
                f"permission denied on agent socket {sock} (it is root-only)", sock
            )
        if isinstance(cause, FileNotFoundError) or not exists:
            return AgentUnavailableError(
                f"agent socket {sock} does not exist: is the ciliary agent of node "
                f"{sock.parent.name!r} running?",
                sock,
            )
        if isinstance(cause, ConnectionRefusedError):
            return AgentUnavailableError(
                f"connection refused on agent socket {sock}: the agent of node "
                f"{sock.parent.name!r} is not running (stale socket)",
                sock,
            )
        return AgentUnavailableError(
            f"cannot connect to agent socket {sock} ({cause or exc}); is the agent running?", sock
        )


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "<body>"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {first.get('msg', 'invalid')}{more}"
