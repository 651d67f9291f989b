"""The CNI plugins' client of the node agent's REST API: the standard library over a unix socket.

Why not ``ciliary.client.agent``: that client serves the CLI and the lab, with httpx and the
pydantic models of ``ciliary.core.models``; importing them costs ~150 ms, and a runtime execs a
plugin for every verb of every pod. Why not ``http.client``: it imports the ``email`` package
(~15 ms, most of what a plugin would otherwise spend on imports). The peer is our own agent
(aiohttp on ``<run dir>/<node>/agent.sock``), so the HTTP spoken here is small and fixed: one
request per connection with ``Connection: close``, a JSON body with ``Content-Length``, and an
answer framed by ``Content-Length``, chunks or the end of the stream. Bodies are plain dicts with
the JSON field names of ``ciliary.core.models``; the agent validates requests with those models,
and answers are checked here for the fields the plugins read.

Failures are told apart as ``ciliary.client.agent`` tells them, with the same messages: the
socket is missing, refused (stale), root-only, the agent is too slow, the connection broke, or
the agent answered with an error (an ``ErrorResponse`` body: status, kind, message).
"""

from __future__ import annotations

# ``_socket``, not ``socket``: the wrapper module imports ``enum`` and ``selectors`` (~10 ms of
# an exec); the C socket object does everything a request needs. JSON: see ``cjson``.
import _socket
import os

from ciliary.cni import cjson
from ciliary.cni.spec import is_name

TYPE_CHECKING = False  # mypy reads it as true: ``typing`` is for the type checker only
if TYPE_CHECKING:
    from typing import Any

DEFAULT_RUN_DIR = "/run/ciliary"
RUN_DIR_ENV = "CILIARY_RUN_DIR"
SOCKET_NAME = "agent.sock"
API_PREFIX = "/v1"

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RECV = 65536

# What the plugins read of the answers (``Endpoint``, ``IPAllocation``), and of which JSON type.
_OPT_STR = (str, type(None))
_ENDPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int, "ifname": str, "lxc": str, "mac": str, "node_mac": str, "mtu": int,
    "ipv4": _OPT_STR, "ipv6": _OPT_STR, "ipv4_gateway": _OPT_STR, "ipv6_gateway": _OPT_STR,
}  # fmt: skip
_ALLOCATION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "owner": str, "kind": str, "family": int, "address": str, "prefix_len": int,
    "gateway": _OPT_STR,
}  # fmt: skip


class AgentClientError(Exception):
    """Base of every error this module raises; ``str()`` is a one-line user-facing message."""


class AgentUnavailableError(AgentClientError):
    """The agent could not be reached: no socket, connection refused, broken stream or timeout."""

    def __init__(self, message: str, socket_path: str | None = None, *, timed_out: bool = False):
        super().__init__(message)
        self.socket_path = socket_path
        self.timed_out = timed_out


class AgentPermissionError(AgentUnavailableError):
    """The socket (or the run dir) is root-only and we are not allowed to open it."""


class AgentDiscoveryError(AgentClientError):
    """The config names no valid node."""


class AgentProtocolError(AgentClientError):
    """The agent answered with something that is not what the API promises."""


class AgentAPIError(AgentClientError):
    """The agent answered with an error status and (normally) an ``ErrorResponse`` body."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        text = message if status < 500 else f"agent failed (HTTP {status}, {kind}): {message}"
        super().__init__(text)


class _BrokenResponseError(Exception):
    """The stream ended (or made no sense) before a whole response was read."""


# --------------------------------------------------------------------------- socket discovery


def run_dir() -> str:
    """Root of the per-node agent directories (``/run/ciliary`` unless ``CILIARY_RUN_DIR``)."""
    return os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


def agent_socket_path(node: str) -> str:
    """The socket the agent of ``node`` serves on."""
    if not is_name(node):
        raise AgentDiscoveryError(f"invalid node name {node!r}")
    return os.path.join(run_dir(), node, SOCKET_NAME)


def node_of(socket_path: str) -> str:
    """The node an agent socket belongs to: the name of its directory."""
    return os.path.basename(os.path.dirname(socket_path))


# --------------------------------------------------------------------------- HTTP/1.1


def quote(text: str) -> str:
    """Percent-encoding of a query value (everything but RFC 3986's unreserved characters)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


def read_response(sock: _socket.socket) -> tuple[int, str, bytes]:
    """(status, reason, body) of the one response on ``sock``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(_RECV)
        if not chunk:
            raise _BrokenResponseError(
                "server disconnected without sending a response"
                if not buf
                else "server disconnected in the middle of the response headers"
            )
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    proto, _, status_reason = status_line.partition(" ")
    code, _, reason = status_reason.partition(" ")
    if not proto.startswith("HTTP/1.") or not (code.isascii() and code.isdigit()):
        raise _BrokenResponseError(f"not an HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(code)
    if status in (204, 304):
        return status, reason, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, reason, _dechunk(_read_to_end(sock, rest))
    length = headers.get("content-length")
    if length is None:
        return status, reason, _read_to_end(sock, rest)
    if not length.isdigit():
        raise _BrokenResponseError(f"invalid Content-Length {length!r}")
    want = int(length)
    parts, have = [rest], len(rest)
    while have < want:
        chunk = sock.recv(max(_RECV, want - have))
        if not chunk:
            raise _BrokenResponseError(f"server disconnected after {have} of {want} body bytes")
        parts.append(chunk)
        have += len(chunk)
    return status, reason, b"".join(parts)[:want]


def _read_to_end(sock: _socket.socket, start: bytes) -> bytes:
    parts = [start]
    while chunk := sock.recv(_RECV):
        parts.append(chunk)
    return b"".join(parts)


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise _BrokenResponseError("incomplete chunked body")
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BrokenResponseError(f"invalid chunk size {size_text[:20]!r}") from None
        if size == 0:
            return b"".join(out)
        start, end = eol + 2, eol + 2 + size
        if end > len(data):
            raise _BrokenResponseError("incomplete chunked body")
        out.append(data[start:end])
        pos = end + 2


# --------------------------------------------------------------------------- the client


class AgentClient:
    """The agent API calls the CNI plugins make. One connection per call; nothing to close."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AgentClient({self.socket_path!r})"

    # -- API

    def healthz(self) -> dict[str, Any]:
        return self._object("GET", "/healthz")

    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint, each with at least ``id``, ``container_id`` and ``ifname``."""
        where = self._where("GET", "/endpoint")
        items = self.request("GET", "/endpoint")
        if not isinstance(items, list):
            raise AgentProtocolError(f"{where}: <body>: expected a list")
        for i, item in enumerate(items):
            expect(item, {"id": int, "container_id": str, "ifname": str}, where, str(i))
        return items

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """Plug a pod in (an ``EndpointCreateRequest``); returns the endpoint once it is ready."""
        endpoint = self._object("PUT", "/endpoint", body)
        return expect(endpoint, _ENDPOINT_FIELDS, self._where("PUT", "/endpoint"))

    def delete_endpoint(self, endpoint_id: int) -> dict[str, Any]:
        return self._object("DELETE", f"/endpoint/{int(endpoint_id)}")

    def check_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """CNI CHECK (an ``EndpointCheckRequest``): ``ok`` and the ``problems`` found."""
        resp = self._object("POST", "/endpoint/check", body)
        where = self._where("POST", "/endpoint/check")
        expect(resp, {"ok": bool, "problems": list}, where)
        for i, problem in enumerate(resp["problems"]):
            if not isinstance(problem, str):
                raise AgentProtocolError(f"{where}: problems.{i}: expected a string")
        return resp

    def gc(self, body: dict[str, Any]) -> dict[str, Any]:
        """CNI GC (a ``GCRequest``): ``endpoints_removed`` and ``addresses_released``."""
        resp = self._object("POST", "/gc", body)
        return expect(
            resp,
            {"endpoints_removed": list, "addresses_released": list},
            self._where("POST", "/gc"),
        )

    def ipam_allocate(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Addresses for one attachment (an ``IPAMAllocateRequest``): its allocations."""
        return self._allocations("POST", "/ipam", body)

    def ipam_release(self, owner: str) -> list[dict[str, Any]]:
        """Release what ``owner`` (``<container id>/<ifname>``) holds: what was released."""
        return self._allocations("DELETE", f"/ipam?owner={quote(owner)}")

    def ipam_list(self) -> list[dict[str, Any]]:
        """Every allocation of the node (``IPAMListing.allocations``)."""
        return self._allocations("GET", "/ipam")

    # -- plumbing

    def _where(self, method: str, path: str) -> str:
        return (
            f"agent at {self.socket_path} answered {method} {API_PREFIX}{path.partition('?')[0]} "
            "with an unexpected body"
        )

    def _object(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = self.request(method, path, body)
        if not isinstance(data, dict):
            raise AgentProtocolError(f"{self._where(method, path)}: <body>: expected an object")
        return data

    def _allocations(self, method: str, path: str, body: Any = None) -> list[dict[str, Any]]:
        where = self._where(method, path)
        allocations = expect(self._object(method, path, body), {"allocations": list}, where)
        items: list[dict[str, Any]] = allocations["allocations"]
        for i, item in enumerate(items):
            expect(item, _ALLOCATION_FIELDS, where, f"allocations.{i}")
            if item["family"] not in (4, 6):
                raise AgentProtocolError(f"{where}: allocations.{i}.family: expected 4 or 6")
        return items

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call of ``API_PREFIX + path``: the decoded JSON answer, or an error."""
        payload = b"" if body is None else cjson.dumps(body).encode()
        head = (
            f"{method} {API_PREFIX}{path} HTTP/1.1\r\nHost: agent\r\n"
            "Accept: application/json\r\nConnection: close\r\n"
            + ("Content-Type: application/json\r\n" if body is not None else "")
            + f"Content-Length: {len(payload)}\r\n\r\n"
        )
        status, reason, content = self._exchange(head.encode() + payload)
        if status >= 400:
            raise _api_error(status, reason, content)
        try:
            return cjson.loads(content.decode())
        except ValueError as err:
            raise AgentProtocolError(f"{self._where(method, path)}: <body>: {err}") from err

    def _exchange(self, request: bytes) -> tuple[int, str, bytes]:
        path, limit = self.socket_path, f"{self.timeout:g}s"
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(path)
            except TimeoutError as err:
                raise AgentUnavailableError(
                    f"agent at {path} did not accept a connection within {limit}; is it stuck?",
                    path,
                    timed_out=True,
                ) from err
            except OSError as err:
                raise self._connect_failure(err) from err
            try:
                sock.sendall(request)
                return read_response(sock)
            except TimeoutError as err:
                raise AgentUnavailableError(
                    f"agent at {path} did not answer within {limit} (read timeout); is it stuck?",
                    path,
                    timed_out=True,
                ) from err
            except (OSError, _BrokenResponseError) as err:
                detail = (err.strerror if isinstance(err, OSError) else None) or str(err)
                raise AgentUnavailableError(
                    f"connection to the agent at {path} broke ({detail or type(err).__name__}); "
                    "did the agent exit?",
                    path,
                ) from err
        finally:
            sock.close()

    def _connect_failure(self, err: OSError) -> AgentUnavailableError:
        sock = self.socket_path
        exists = os.path.exists(sock)
        accessible = os.access(sock, os.R_OK | os.W_OK)
        if isinstance(err, PermissionError) or (exists and not accessible):
            return AgentPermissionError(
                f"permission denied on agent socket {sock} (it is root-only)", sock
            )
        if isinstance(err, FileNotFoundError) or not exists:
            return AgentUnavailableError(
                f"agent socket {sock} does not exist: is the ciliary agent of node "
                f"{node_of(sock)!r} running?",
                sock,
            )
        if isinstance(err, ConnectionRefusedError):
            return AgentUnavailableError(
                f"connection refused on agent socket {sock}: the agent of node "
                f"{node_of(sock)!r} is not running (stale socket)",
                sock,
            )
        return AgentUnavailableError(
            f"cannot connect to agent socket {sock} ({err}); is the agent running?", sock
        )


def _api_error(status: int, reason: str, content: bytes) -> AgentAPIError:
    """The agent's ``ErrorResponse`` (``{"error", "kind"}``), or the first line of whatever
    else answered with an error status."""
    try:
        err = cjson.loads(content.decode())
    except ValueError:
        err = None
    if (
        isinstance(err, dict)
        and isinstance(err.get("error"), str)
        and isinstance(err.get("kind", ""), str)
        and set(err) <= {"error", "kind"}
    ):
        return AgentAPIError(status, err.get("kind", "error"), err["error"])
    lines = content.decode("utf-8", errors="replace").strip().splitlines()
    return AgentAPIError(status, "http", lines[0] if lines else reason or "no details")


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "a boolean", list: "a list"}


def expect(
    data: Any, fields: dict[str, type | tuple[type, ...]], where: str, loc: str = ""
) -> dict[str, Any]:
    """``data`` itself when it is an object whose ``fields`` have the given types; else the
    protocol error naming the first field that is not as promised."""
    prefix = f"{loc}." if loc else ""
    if not isinstance(data, dict):
        raise AgentProtocolError(f"{where}: {loc or '<body>'}: expected an object")
    for name, types in fields.items():
        value = data.get(name)
        allowed = types if isinstance(types, tuple) else (types,)
        # JSON has no int/bool distinction in Python's eyes: True is not a number here
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            what = " or ".join(_TYPE_NAMES.get(t, "null") for t in allowed)
            state = "missing" if name not in data else f"expected {what}"
            raise AgentProtocolError(f"{where}: {prefix}{name}: {state}")
    return data
