"""The CNI specification as data: versions, the plugin's environment, its config, its result, its
errors.

Why a module of its own: the verbs in ``ciliary.cni.main`` and ``ciliary.cni.ipam_main`` should
read like the spec's prose ("CHECK needs prevResult", "DEL is best effort"), and every rule that
is the same for both plugins lives here once, with unit tests that do not need an agent.

What the spec fixes and we follow (SPEC.md 1.1.0, with its upgrade notes back to 0.3.1):

* versions: we speak 0.3.1, 0.4.0, 1.0.0 and 1.1.0. A result is always produced *in the version
  the config asked for*: 0.3.1/0.4.0 results carry ``ips[].version`` ("4"/"6"), 1.0.0 dropped it,
  1.1.0 added interface ``mtu``/``socketPath``/``pciID`` and route ``mtu``/``advmss``/
  ``priority``/``table``/``scope``. Fields a version does not know are omitted, never sent.
  CHECK exists from 0.4.0, GC and STATUS from 1.1.0; asking for them in an older version is
  error 1.
* environment: ``CNI_CONTAINERID`` starts alphanumeric then ``[A-Za-z0-9_.-]``; ``CNI_IFNAME`` is
  at most 15 characters, not ``.``/``..``, without ``/``, ``:`` or whitespace; ``CNI_ARGS`` is
  ``K=V;K2=V2``. A wrong value is error 4 naming the variable.
* errors: ``{"cniVersion", "code", "msg", "details"}`` on stdout with a non-zero exit; codes below
  100 are the spec's, 100+ ours. ``msg`` is always one line a person can act on, ``details`` is
  optional (omitted when empty).

Nothing here talks to the agent, and nothing here imports more than the standard library: a runtime
execs a plugin for every verb of every pod, so what it imports is paid each time (pydantic alone
would cost more than all the rest of an ADD's Python). The config and result are therefore plain
classes checked by hand, in pydantic's wording.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ciliary.cni import cjson

# ``typing`` and ``collections.abc`` cost milliseconds a plugin exec cannot spare: they are for
# the type checker only (mypy reads ``TYPE_CHECKING`` as true whatever it is bound to). So do
# ``json``, ``re``, ``enum`` and ``ipaddress`` (~13 ms together, more than the interpreter's own
# start): JSON goes through :mod:`ciliary.cni.cjson`, names are checked character by character,
# the error codes are plain ints, and ``ipaddress`` is imported by the few checks of addresses
# a config or prevResult brings (never on an ADD without requested IPs).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from ipaddress import IPv4Address, IPv6Address
    from typing import Any, Literal, TypeVar

    _T = TypeVar("_T")
    Loc = tuple[str | int, ...]

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_REST = _NAME_FIRST | frozenset("_.-")
IFNAME_MAX = 15
_INF = float("inf")


def is_name(value: str) -> bool:
    r"""A container ID, network or node name as the spec (and libcni's Go regexp
    ``^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$``) allows them: a letter or digit, then letters, digits,
    ``_``, ``.`` or ``-`` (ASCII only; nothing after them, not even a newline)."""
    return bool(value) and value[0] in _NAME_FIRST and _NAME_REST.issuperset(value)


VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"

# NS_GET_NSTYPE = _IO(0xb7, 0x3) (linux/nsfs.h): which kind of namespace a file refers to.
_NS_GET_NSTYPE = 0xB703
_CLONE_NEWNET = 0x40000000


class ErrorCode:
    """Well-known error codes (SPEC.md "Error"), and ours from 100 on: plain ints (an
    ``IntEnum`` would import ``enum``, ~5 ms of an exec); :func:`error_codes` lists them."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    NOT_AVAILABLE_LIMITED = 51
    AGENT_REFUSED = 100
    IPAM_EXHAUSTED = 101
    NETNS_NOT_FOUND = 102
    ATTACHMENT_CONFLICT = 103
    """ADD of a container interface another network (or another netns/address) already holds."""


def error_codes() -> dict[str, int]:
    """Every :class:`ErrorCode` by name."""
    return {k: v for k, v in vars(ErrorCode).items() if k.isupper() and isinstance(v, int)}


def _one_line(text: str) -> str:
    """Lines joined with ``"; "``, the whitespace around each line break and empty lines
    dropped."""
    return "; ".join(line for line in (part.strip() for part in text.split("\n")) if line)


class CNIError(Exception):
    """An error the plugin reports to its runtime, as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code = int(code)
        self.msg = _one_line(msg) or "unknown error"
        self.details = details.strip()
        super().__init__(self.msg)

    def to_dict(self, version: str = CURRENT_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def to_json(self, version: str = CURRENT_VERSION) -> str:
        return cjson.dumps(self.to_dict(version))

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r})"


# --------------------------------------------------------------------------- versions


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; anything else is error 1 (the spec's "incompatible")."""
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CNIError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"CNI version {version!r} is not a version (want MAJOR.MINOR.PATCH)",
        )
    return int(parts[0]), int(parts[1]), int(parts[2])


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def check_supported(version: object) -> str:
    """The version itself when we speak it, else error 1 listing what we speak."""
    if not isinstance(version, str) or not version:
        raise CNIError(ErrorCode.INVALID_CONFIG, "network config has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"CNI version {version} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    return version


def negotiate(cni_version: str | None, cni_versions: Sequence[str] | None = None) -> str:
    """The version to speak: the highest of ``cniVersions`` we support, else ``cniVersion``.

    This is the 1.1.0 rule for configs that list several versions (a runtime picks the highest
    version it and the plugins share); a config with only ``cniVersion`` must be spoken as is.
    """
    common = [v for v in (cni_versions or []) if v in SUPPORTED_VERSIONS]
    if common:
        return max(common, key=parse_version)
    return check_supported(cni_version)


def version_info(requested: str | None = None) -> dict[str, Any]:
    """The VERSION answer: spoken in the config's version when we support it."""
    version = requested if requested in SUPPORTED_VERSIONS else CURRENT_VERSION
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def require_version(version: str, minimum: str, what: str) -> None:
    """Error 1 when ``what`` (a verb or feature) does not exist in ``version``."""
    if not version_at_least(version, minimum):
        raise CNIError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"{what} is not supported by CNI version {version} (it needs {minimum} or newer)",
        )


# --------------------------------------------------------------------------- environment


class Env:
    """The ``CNI_*`` variables of one invocation, validated for its command."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "path")

    def __init__(
        self,
        command: str,
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: Mapping[str, str] | None = None,
        path: tuple[str, ...] = (),
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Env({fields})"

    @property
    def owner(self) -> str:
        """The attachment key the agent's IPAM uses: ``<container id>/<ifname>``."""
        return f"{self.container_id}/{self.ifname}"

    def arg(self, key: str, default: str = "") -> str:
        return (self.args or {}).get(key, default)


def parse_command(environ: Mapping[str, str]) -> str:
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(
            ErrorCode.INVALID_ENV, f"CNI_COMMAND is not set (want one of {', '.join(COMMANDS)})"
        )
    if command not in COMMANDS:
        raise CNIError(
            ErrorCode.INVALID_ENV,
            f"unknown CNI_COMMAND {command!r} (want one of {', '.join(COMMANDS)})",
        )
    return command


def validate_container_id(value: str) -> str:
    if not value:
        raise CNIError(ErrorCode.INVALID_ENV, "CNI_CONTAINERID is not set")
    if not is_name(value):
        raise CNIError(
            ErrorCode.INVALID_ENV,
            f"CNI_CONTAINERID {value!r} is invalid: it must start with a letter or digit "
            "followed by letters, digits, '_', '.' or '-'",
        )
    return value


def validate_ifname(value: str) -> str:
    if not value:
        raise CNIError(ErrorCode.INVALID_ENV, "CNI_IFNAME is not set")
    if value in (".", ".."):
        raise CNIError(ErrorCode.INVALID_ENV, f"CNI_IFNAME {value!r} is not an interface name")
    if len(value) > IFNAME_MAX:
        raise CNIError(
            ErrorCode.INVALID_ENV,
            f"CNI_IFNAME {value!r} is {len(value)} characters long; "
            f"Linux allows at most {IFNAME_MAX}",
        )
    if any(c in "/:" or c.isspace() for c in value):
        raise CNIError(
            ErrorCode.INVALID_ENV,
            f"CNI_IFNAME {value!r} contains '/', ':' or whitespace, which Linux does not allow",
        )
    return value


def parse_cni_args(value: str) -> dict[str, str]:
    """``"K8S_POD_NAME=a;K8S_POD_NAMESPACE=b"`` -> dict; a pair without ``=`` is error 4."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise CNIError(
                ErrorCode.INVALID_ENV,
                f"CNI_ARGS has an invalid pair {part!r} (want KEY=VALUE pairs separated by ';')",
            )
        out[key.strip()] = val.strip()
    return out


def parse_env(environ: Mapping[str, str], command: str | None = None) -> Env:
    """Validate what ``command`` needs: ADD and CHECK need a container, a netns and an ifname;
    DEL the container and the ifname (the netns may be gone already); GC, STATUS and VERSION
    need none of them."""
    command = command or parse_command(environ)
    args = parse_cni_args(environ.get("CNI_ARGS", ""))
    path = tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p)
    if command not in ("ADD", "DEL", "CHECK"):
        return Env(command=command, args=args, path=path)
    container_id = validate_container_id(environ.get("CNI_CONTAINERID", ""))
    netns = environ.get("CNI_NETNS", "")
    if command != "DEL" and not netns:
        raise CNIError(ErrorCode.INVALID_ENV, f"CNI_NETNS is not set (required for {command})")
    ifname = validate_ifname(environ.get("CNI_IFNAME", ""))
    return Env(command, container_id=container_id, netns=netns, ifname=ifname, args=args, path=path)


def check_netns(path: str) -> None:
    """Error 102 unless ``path`` is a network namespace other than our own.

    ``NS_GET_NSTYPE`` on the file tells a netns (a bind mount under /run/netns or
    /proc/<pid>/ns/net) from any other file; being handed the plugin's own namespace would plug
    the node into itself, which is a runtime bug we refuse rather than carry out.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise CNIError(
            ErrorCode.NETNS_NOT_FOUND, f"network namespace {path} does not exist"
        ) from err
    except OSError as err:
        raise CNIError(
            ErrorCode.NETNS_NOT_FOUND, f"cannot open network namespace {path}: {err.strerror}"
        ) from err
    try:
        try:
            nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError as err:
            if err.errno in (errno.ENOTTY, errno.EINVAL):
                nstype = 0
            else:
                raise CNIError(
                    ErrorCode.NETNS_NOT_FOUND,
                    f"cannot inspect network namespace {path}: {err.strerror}",
                ) from err
        if nstype != _CLONE_NEWNET:
            raise CNIError(
                ErrorCode.NETNS_NOT_FOUND, f"{path} is not a network namespace (wrong netns)"
            )
        mine = os.stat("/proc/self/ns/net")
        theirs = os.fstat(fd)
        if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
            raise CNIError(
                ErrorCode.NETNS_NOT_FOUND,
                f"{path} is the plugin's own network namespace, not a pod's (wrong netns)",
            )
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- validation
#
# The spec objects below are plain classes checked by hand rather than pydantic models: a plugin
# is exec'd once per pod and pydantic alone costs more to import than everything else it does.
# The checks keep pydantic's (lax) rules and wording, so an error names the field the way it
# always did: ``<dotted location>: <what is wrong> (+N more)``, the first error in field order.

_MISSING: Any = object()
_TRUE = frozenset(("1", "on", "t", "true", "y", "yes"))
_FALSE = frozenset(("0", "off", "f", "false", "n", "no"))
_INT_STR = r"\s*([+-]?[0-9][0-9_]*)(?:\.0*)?\s*"  # an int given as a string (rare: re then)


class _Checker:
    """Collects every problem of one object, each as ``(location, message)``."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, loc: Loc, msg: str) -> None:
        self.errors.append((".".join(str(p) for p in loc), msg))

    def summary(self) -> str:
        loc, msg = self.errors[0]
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"{loc or '<config>'}: {msg}{more}"

    def missing(self, value: object, loc: Loc) -> bool:
        if value is _MISSING:
            self.fail(loc, "Field required")
            return True
        return False

    def str_(self, value: object, loc: Loc, *, min_length: int = 0) -> str:
        if self.missing(value, loc):
            return ""
        if not isinstance(value, str):
            self.fail(loc, "Input should be a valid string")
            return ""
        if len(value) < min_length:
            unit = "character" if min_length == 1 else "characters"
            self.fail(loc, f"String should have at least {min_length} {unit}")
        return value

    def int_(self, value: object, loc: Loc, *, ge: int | None = None, le: int | None = None) -> int:
        if self.missing(value, loc):
            return 0
        number: int
        if isinstance(value, int):  # bool included, as pydantic's lax mode has it
            number = int(value)
        elif isinstance(value, float):
            if not -_INF < value < _INF:  # NaN is not between them either
                self.fail(loc, "Input should be a finite number")
                return 0
            if not value.is_integer():
                self.fail(
                    loc, "Input should be a valid integer, got a number with a fractional part"
                )
                return 0
            number = int(value)
        elif isinstance(value, str):
            import re  # noqa: PLC0415 - only a config with an int as a string pays for it

            match = re.fullmatch(_INT_STR, value)
            try:
                number = int(match.group(1) if match else value)
            except ValueError:
                self.fail(
                    loc, "Input should be a valid integer, unable to parse string as an integer"
                )
                return 0
        else:
            self.fail(loc, "Input should be a valid integer")
            return 0
        if ge is not None and number < ge:
            self.fail(loc, f"Input should be greater than or equal to {ge}")
        elif le is not None and number > le:
            self.fail(loc, f"Input should be less than or equal to {le}")
        return number

    def bool_(self, value: object, loc: Loc) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, int | str) or (isinstance(value, float) and value.is_integer()):
            text = value.lower() if isinstance(value, str) else ""
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            self.fail(loc, "Input should be a valid boolean, unable to interpret input")
            return False
        self.fail(loc, "Input should be a valid boolean")
        return False

    def literal(self, value: object, loc: Loc, allowed: tuple[str, ...]) -> str:
        if isinstance(value, str) and value in allowed:
            return value
        self.fail(loc, "Input should be " + " or ".join(repr(a) for a in allowed))
        return allowed[0]

    def list_(self, value: object, loc: Loc, item: Callable[[object, Loc], _T]) -> list[_T]:
        if self.missing(value, loc):
            return []
        if not isinstance(value, list):
            self.fail(loc, "Input should be a valid list")
            return []
        return [item(v, (*loc, i)) for i, v in enumerate(value)]

    def str_list(self, value: object, loc: Loc) -> list[str]:
        return self.list_(value, loc, self.str_)

    def dict_(self, value: object, loc: Loc) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.fail(loc, "Input should be a valid dictionary")
        return {}

    def model(
        self,
        value: object,
        loc: Loc,
        check: Callable[[Mapping[str, Any], Loc, _Checker], _T],
        name: str,
    ) -> _T:
        if self.missing(value, loc):
            return check({}, loc, _Checker())
        if not isinstance(value, dict):
            self.fail(loc, f"Input should be a valid dictionary or instance of {name}")
            return check({}, loc, _Checker())  # a placeholder: this object is invalid anyway
        return check(value, loc, self)

    def optional(self, value: object, check: Callable[[object], _T]) -> _T | None:
        """``X | None``: null (or absent, for fields that default to None) is None."""
        return None if value is None else check(value)


class _Spec:
    """A spec object: attributes named as the spec spells its keys."""

    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


# --------------------------------------------------------------------------- the result


class DNS(_Spec):
    __slots__ = ("domain", "nameservers", "options", "search")

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        domain: str | None = None,
        search: Sequence[str] = (),
        options: Sequence[str] = (),
    ) -> None:
        self.nameservers = list(nameservers)
        self.domain = domain
        self.search = list(search)
        self.options = list(options)

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> DNS:
        return cls(
            nameservers=ck.str_list(data.get("nameservers", []), (*loc, "nameservers")),
            domain=ck.optional(data.get("domain"), lambda v: ck.str_(v, (*loc, "domain"))),
            search=ck.str_list(data.get("search", []), (*loc, "search")),
            options=ck.str_list(data.get("options", []), (*loc, "options")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


class Interface(_Spec):
    __slots__ = ("mac", "mtu", "name", "pciID", "sandbox", "socketPath")

    def __init__(
        self,
        name: str,
        *,
        mac: str | None = None,
        sandbox: str | None = None,
        mtu: int | None = None,
        socketPath: str | None = None,  # noqa: N803 - the spec's spelling
        pciID: str | None = None,  # noqa: N803
    ) -> None:
        self.name = name
        self.mac = mac
        self.sandbox = sandbox
        self.mtu = mtu
        self.socketPath = socketPath
        self.pciID = pciID

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> Interface:
        def opt_str(key: str) -> str | None:
            return ck.optional(data.get(key), lambda v: ck.str_(v, (*loc, key)))

        return cls(
            name=ck.str_(data.get("name", _MISSING), (*loc, "name"), min_length=1),
            mac=opt_str("mac"),
            sandbox=opt_str("sandbox"),
            mtu=ck.optional(data.get("mtu"), lambda v: ck.int_(v, (*loc, "mtu"), ge=0)),
            socketPath=opt_str("socketPath"),
            pciID=opt_str("pciID"),
        )


class IPConfig(_Spec):
    __slots__ = ("address", "gateway", "interface", "version")

    def __init__(
        self,
        address: str,
        gateway: str | None = None,
        interface: int | None = None,
        version: Literal["4", "6"] | None = None,
    ) -> None:
        self.address = address
        self.gateway = gateway
        self.interface = interface
        self.version = version  # 0.3.x/0.4.0 only; derived from the address when written

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> IPConfig:
        from ipaddress import ip_address, ip_interface  # noqa: PLC0415 - see the imports

        address = ck.str_(data.get("address", _MISSING), (*loc, "address"))
        if isinstance(data.get("address"), str):
            try:
                iface = ip_interface(address)
            except ValueError:
                ck.fail((*loc, "address"), f"{address!r} is not an address in CIDR notation")
            else:
                if "/" not in address:
                    ck.fail(
                        (*loc, "address"), f"{address!r} has no prefix length (want CIDR notation)"
                    )
                address = str(iface)
        gateway = ck.optional(data.get("gateway"), lambda v: ck.str_(v, (*loc, "gateway")))
        if gateway is not None and isinstance(data.get("gateway"), str):
            try:
                gateway = str(ip_address(gateway))
            except ValueError:
                ck.fail((*loc, "gateway"), f"gateway {gateway!r} is not an IP address")
        interface = ck.optional(
            data.get("interface"), lambda v: ck.int_(v, (*loc, "interface"), ge=0)
        )
        version = ck.optional(
            data.get("version"), lambda v: ck.literal(v, (*loc, "version"), ("4", "6"))
        )
        return cls(address, gateway, interface, version)  # type: ignore[arg-type]

    @property
    def family(self) -> Literal[4, 6]:
        """4 or 6 (an IPv6 address is the one with colons: no need for ``ipaddress``)."""
        return 6 if ":" in self.address else 4

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        from ipaddress import ip_interface  # noqa: PLC0415 - see the imports

        return ip_interface(self.address).ip


class Route(_Spec):
    __slots__ = ("advmss", "dst", "gw", "mtu", "priority", "scope", "table")

    def __init__(
        self,
        dst: str,
        *,
        gw: str | None = None,
        mtu: int | None = None,
        advmss: int | None = None,
        priority: int | None = None,
        table: int | None = None,
        scope: int | None = None,
    ) -> None:
        self.dst = dst
        self.gw = gw
        self.mtu = mtu
        self.advmss = advmss
        self.priority = priority
        self.table = table
        self.scope = scope

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> Route:
        dst = ck.str_(data.get("dst", _MISSING), (*loc, "dst"))
        if isinstance(data.get("dst"), str):
            from ipaddress import ip_network  # noqa: PLC0415 - see the imports

            try:
                dst = str(ip_network(dst, strict=False))
            except ValueError:
                ck.fail((*loc, "dst"), f"route dst {dst!r} is not a CIDR")

        def opt_int(key: str) -> int | None:
            return ck.optional(data.get(key), lambda v: ck.int_(v, (*loc, key), ge=0))

        return cls(
            dst=dst,
            gw=ck.optional(data.get("gw"), lambda v: ck.str_(v, (*loc, "gw"))),
            mtu=opt_int("mtu"),
            advmss=opt_int("advmss"),
            priority=opt_int("priority"),
            table=opt_int("table"),
            scope=opt_int("scope"),
        )


_IFACE_FIELDS: dict[str, tuple[str, ...]] = {
    "0.3.1": ("name", "mac", "sandbox"),
    "0.4.0": ("name", "mac", "sandbox"),
    "1.0.0": ("name", "mac", "sandbox"),
    "1.1.0": ("name", "mac", "mtu", "sandbox", "socketPath", "pciID"),
}
_ROUTE_FIELDS: dict[str, tuple[str, ...]] = {
    "0.3.1": ("dst", "gw"),
    "0.4.0": ("dst", "gw"),
    "1.0.0": ("dst", "gw"),
    "1.1.0": ("dst", "gw", "mtu", "advmss", "priority", "table", "scope"),
}


class Result(_Spec):
    """A plugin's ADD result, version-neutral; :meth:`to_version` writes it for one version."""

    __slots__ = ("cniVersion", "dns", "interfaces", "ips", "routes")

    def __init__(
        self,
        cniVersion: str = CURRENT_VERSION,  # noqa: N803
        interfaces: Sequence[Interface] = (),
        ips: Sequence[IPConfig] = (),
        routes: Sequence[Route] = (),
        dns: DNS | None = None,
    ) -> None:
        self.cniVersion = cniVersion
        self.interfaces = list(interfaces)
        self.ips = list(ips)
        self.routes = list(routes)
        self.dns = dns if dns is not None else DNS()

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> Result:
        def items(
            key: str, check: Callable[[Mapping[str, Any], Loc, _Checker], _T], name: str
        ) -> list[_T]:
            return ck.list_(
                data.get(key, []), (*loc, key), lambda v, at: ck.model(v, at, check, name)
            )

        return cls(
            cniVersion=ck.str_(data.get("cniVersion", CURRENT_VERSION), (*loc, "cniVersion")),
            interfaces=items("interfaces", Interface.check, "Interface"),
            ips=items("ips", IPConfig.check, "IPConfig"),
            routes=items("routes", Route.check, "Route"),
            dns=ck.model(data.get("dns", {}), (*loc, "dns"), DNS.check, "DNS"),
        )

    @classmethod
    def parse(cls, data: object, version: str | None = None) -> Result:
        """A result in any supported version (``prevResult``, a cached result, a plugin's
        output). Errors are error 7 (a prevResult is part of the config) naming the field."""
        if not isinstance(data, dict):
            raise CNIError(ErrorCode.INVALID_CONFIG, "a CNI result must be a JSON object")
        version = str(data.get("cniVersion") or version or CURRENT_VERSION)
        check_supported(version)
        ck = _Checker()
        result = cls.check({**data, "cniVersion": version}, (), ck)
        if ck.errors:
            raise CNIError(ErrorCode.INVALID_CONFIG, f"invalid CNI result: {ck.summary()}")
        for index, ipc in enumerate(result.ips):
            if ipc.version is not None and int(ipc.version) != ipc.family:
                raise CNIError(
                    ErrorCode.INVALID_CONFIG,
                    f"invalid CNI result: ips.{index}: version {ipc.version} "
                    f"but address {ipc.address}",
                )
            if ipc.interface is not None and ipc.interface >= len(result.interfaces):
                raise CNIError(
                    ErrorCode.INVALID_CONFIG,
                    f"invalid CNI result: ips.{index}.interface {ipc.interface} "
                    f"but there are {len(result.interfaces)} interfaces",
                )
        return result

    def to_version(self, version: str, *, ipam: bool = False) -> dict[str, Any]:
        """The result as the spec of ``version`` writes it; IPAM results have no interfaces."""
        check_supported(version)
        out: dict[str, Any] = {"cniVersion": version}
        if not ipam and self.interfaces:
            out["interfaces"] = [_pick(i, _IFACE_FIELDS[version]) for i in self.interfaces]
        if self.ips:
            ips = []
            for ipc in self.ips:
                item: dict[str, Any] = {}
                if not version_at_least(version, "1.0.0"):
                    item["version"] = str(ipc.family)
                item["address"] = ipc.address
                if ipc.gateway is not None:
                    item["gateway"] = ipc.gateway
                if ipc.interface is not None and not ipam:
                    item["interface"] = ipc.interface
                ips.append(item)
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_pick(r, _ROUTE_FIELDS[version]) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out

    def sandbox_addresses(self, ifname: str) -> list[str]:
        """CIDRs of ``ips`` that belong to the container interface ``ifname`` (or to no
        interface in particular), as CHECK compares them."""
        out = []
        for ipc in self.ips:
            if ipc.interface is not None:
                iface = self.interfaces[ipc.interface]
                if iface.name != ifname or not iface.sandbox:
                    continue
            out.append(ipc.address)
        return out


def _pick(model: _Spec, fields: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(model, name)
        if value is not None and value != "":
            out[name] = value
    return out


def convert_result(data: object, version: str, *, ipam: bool = False) -> dict[str, Any]:
    """Any supported result, rewritten for ``version``."""
    return Result.parse(data).to_version(version, ipam=ipam)


# --------------------------------------------------------------------------- network config


class Label(_Spec):
    __slots__ = ("key", "value")

    def __init__(self, key: str, value: str) -> None:
        self.key = key
        self.value = value

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> Label:
        return cls(
            key=ck.str_(data.get("key", _MISSING), (*loc, "key")),
            value=ck.str_(data.get("value", _MISSING), (*loc, "value")),
        )


class CNIConventionArgs(_Spec):
    """``args.cni`` (CONVENTIONS.md): labels and requested IPs passed by the runtime."""

    __slots__ = ("ips", "labels")

    def __init__(self, labels: Sequence[Label] = (), ips: Sequence[str] = ()) -> None:
        self.labels = list(labels)
        self.ips = list(ips)

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> CNIConventionArgs:
        return cls(
            labels=ck.list_(
                data.get("labels", []),
                (*loc, "labels"),
                lambda v, at: ck.model(v, at, Label.check, "Label"),
            ),
            ips=ck.str_list(data.get("ips", []), (*loc, "ips")),
        )


class Args(_Spec):
    __slots__ = ("cni",)

    def __init__(self, cni: CNIConventionArgs | None = None) -> None:
        self.cni = cni

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> Args:
        at = (*loc, "cni")
        return cls(
            cni=ck.optional(
                data.get("cni"),
                lambda v: ck.model(v, at, CNIConventionArgs.check, "CNIConventionArgs"),
            )
        )


class PortMapping(_Spec):
    __slots__ = ("containerPort", "hostIP", "hostPort", "protocol")

    def __init__(
        self,
        hostPort: int,  # noqa: N803 - the spec's spelling
        containerPort: int,  # noqa: N803
        protocol: str = "tcp",
        hostIP: str | None = None,  # noqa: N803
    ) -> None:
        self.hostPort = hostPort
        self.containerPort = containerPort
        self.protocol = protocol
        self.hostIP = hostIP

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> PortMapping:
        def port(key: str) -> int:
            return ck.int_(data.get(key, _MISSING), (*loc, key), ge=0, le=65535)

        return cls(
            hostPort=port("hostPort"),
            containerPort=port("containerPort"),
            protocol=ck.str_(data.get("protocol", "tcp"), (*loc, "protocol")),
            hostIP=ck.optional(data.get("hostIP"), lambda v: ck.str_(v, (*loc, "hostIP"))),
        )


class Bandwidth(_Spec):
    __slots__ = ("egressBurst", "egressRate", "ingressBurst", "ingressRate")

    def __init__(
        self,
        ingressRate: int | None = None,  # noqa: N803 - the spec's spelling
        ingressBurst: int | None = None,  # noqa: N803
        egressRate: int | None = None,  # noqa: N803
        egressBurst: int | None = None,  # noqa: N803
    ) -> None:
        self.ingressRate = ingressRate
        self.ingressBurst = ingressBurst
        self.egressRate = egressRate
        self.egressBurst = egressBurst

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> Bandwidth:
        def rate(key: str) -> int | None:
            return ck.optional(data.get(key), lambda v: ck.int_(v, (*loc, key), ge=0))

        return cls(
            ingressRate=rate("ingressRate"),
            ingressBurst=rate("ingressBurst"),
            egressRate=rate("egressRate"),
            egressBurst=rate("egressBurst"),
        )


class RuntimeConfig(_Spec):
    """``runtimeConfig``: the capabilities a runtime fills in. ``ips`` we use; ``portMappings``
    and ``bandwidth`` are for chained plugins and only checked for shape."""

    __slots__ = ("bandwidth", "ips", "portMappings")

    def __init__(
        self,
        ips: Sequence[str] = (),
        portMappings: Sequence[PortMapping] = (),  # noqa: N803 - the spec's spelling
        bandwidth: Bandwidth | None = None,
    ) -> None:
        self.ips = list(ips)
        self.portMappings = list(portMappings)
        self.bandwidth = bandwidth

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> RuntimeConfig:
        at = (*loc, "bandwidth")
        return cls(
            ips=ck.str_list(data.get("ips", []), (*loc, "ips")),
            portMappings=ck.list_(
                data.get("portMappings", []),
                (*loc, "portMappings"),
                lambda v, i: ck.model(v, i, PortMapping.check, "PortMapping"),
            ),
            bandwidth=ck.optional(
                data.get("bandwidth"), lambda v: ck.model(v, at, Bandwidth.check, "Bandwidth")
            ),
        )


class IPAMConfig(_Spec):
    __slots__ = ("agent_socket", "dns", "node", "pools", "routes", "type")

    def __init__(
        self,
        *,
        type: str | None = None,
        node: str | None = None,
        agent_socket: str | None = None,
        pools: list[str] | None = None,
        routes: list[Route] | None = None,
        dns: DNS | None = None,
    ) -> None:
        self.type = type
        self.node = node
        self.agent_socket = agent_socket
        self.pools = pools
        self.routes = routes
        self.dns = dns

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> IPAMConfig:
        def opt_str(key: str) -> str | None:
            return ck.optional(data.get(key), lambda v: ck.str_(v, (*loc, key)))

        routes_at, dns_at = (*loc, "routes"), (*loc, "dns")
        return cls(
            type=opt_str("type"),
            node=opt_str("node"),
            agent_socket=opt_str("agent_socket"),
            pools=ck.optional(data.get("pools"), lambda v: ck.str_list(v, (*loc, "pools"))),
            routes=ck.optional(
                data.get("routes"),
                lambda v: ck.list_(
                    v, routes_at, lambda r, at: ck.model(r, at, Route.check, "Route")
                ),
            ),
            dns=ck.optional(data.get("dns"), lambda v: ck.model(v, dns_at, DNS.check, "DNS")),
        )


class Attachment(_Spec):
    __slots__ = ("containerID", "ifname")

    def __init__(self, containerID: str, ifname: str) -> None:  # noqa: N803 - the spec's spelling
        self.containerID = containerID
        self.ifname = ifname

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> Attachment:
        return cls(
            containerID=ck.str_(
                data.get("containerID", _MISSING), (*loc, "containerID"), min_length=1
            ),
            ifname=ck.str_(data.get("ifname", _MISSING), (*loc, "ifname"), min_length=1),
        )


_NETCONF_KEYS = frozenset((
    "cniVersion", "cniVersions", "name", "type", "args", "runtimeConfig", "prevResult", "dns",
    "capabilities", "node", "agent_socket", "mtu", "ipam", VALID_ATTACHMENTS_KEY,
    LEGACY_ATTACHMENTS_KEY,
))  # fmt: skip
# The attachment lists may also be given by their attribute names (unless their keys are there).
_ATTACHMENT_FIELDS = {
    "valid_attachments": VALID_ATTACHMENTS_KEY,
    "legacy_attachments": LEGACY_ATTACHMENTS_KEY,
}


class NetConf(_Spec):
    """One plugin's network configuration (what the runtime writes on our stdin).

    Keys we do not know are kept in :attr:`extra` (runtimes and other plugins add their own)."""

    __slots__ = (
        "agent_socket",
        "args",
        "capabilities",
        "cniVersion",
        "cniVersions",
        "dns",
        "extra",
        "ipam",
        "legacy_attachments",
        "mtu",
        "name",
        "node",
        "prevResult",
        "runtimeConfig",
        "type",
        "valid_attachments",
    )  # fmt: skip

    def __init__(
        self,
        cniVersion: str,  # noqa: N803 - the spec's spelling
        name: str,
        type: str,
        *,
        cniVersions: list[str] | None = None,  # noqa: N803
        args: Args | None = None,
        runtimeConfig: RuntimeConfig | None = None,  # noqa: N803
        prevResult: dict[str, Any] | None = None,  # noqa: N803
        dns: DNS | None = None,
        capabilities: dict[str, bool] | None = None,
        node: str | None = None,
        agent_socket: str | None = None,
        mtu: int | None = None,
        ipam: IPAMConfig | None = None,
        valid_attachments: list[Attachment] | None = None,
        legacy_attachments: list[Attachment] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.cniVersion = cniVersion
        self.cniVersions = cniVersions
        self.name = name
        self.type = type
        self.args = args
        self.runtimeConfig = runtimeConfig if runtimeConfig is not None else RuntimeConfig()
        self.prevResult = prevResult
        self.dns = dns
        self.capabilities = capabilities
        # ours
        self.node = node
        self.agent_socket = agent_socket
        self.mtu = mtu
        self.ipam = ipam
        # GC (1.1.0), and its pre-release spelling that libcni also injects
        self.valid_attachments = valid_attachments
        self.legacy_attachments = legacy_attachments
        self.extra: dict[str, Any] = extra or {}

    @classmethod
    def check(cls, data: Mapping[str, Any], loc: Loc, ck: _Checker) -> NetConf:
        def opt_str(key: str) -> str | None:
            return ck.optional(data.get(key), lambda v: ck.str_(v, (*loc, key)))

        def opt_model(
            key: str, check: Callable[[Mapping[str, Any], Loc, _Checker], _T], name: str
        ) -> _T | None:
            return ck.optional(data.get(key), lambda v: ck.model(v, (*loc, key), check, name))

        def attachments(alias: str, field: str) -> list[Attachment] | None:
            key = alias if alias in data else field
            return ck.optional(
                data.get(key),
                lambda v: ck.list_(
                    v, (*loc, key), lambda a, at: ck.model(a, at, Attachment.check, "Attachment")
                ),
            )

        def capabilities(value: object) -> dict[str, bool]:
            caps = ck.dict_(value, (*loc, "capabilities"))
            return {k: ck.bool_(v, (*loc, "capabilities", k)) for k, v in caps.items()}

        cni_version = ck.str_(data.get("cniVersion", _MISSING), (*loc, "cniVersion"))
        cni_versions = ck.optional(
            data.get("cniVersions"), lambda v: ck.str_list(v, (*loc, "cniVersions"))
        )
        name = ck.str_(data.get("name", _MISSING), (*loc, "name"), min_length=1)
        if name and not is_name(name):
            ck.fail(
                (*loc, "name"),
                "must start with a letter or digit followed by letters, digits, '_', '.' or '-'",
            )
        return cls(
            cni_version,
            name,
            ck.str_(data.get("type", _MISSING), (*loc, "type"), min_length=1),
            cniVersions=cni_versions,
            args=opt_model("args", Args.check, "Args"),
            runtimeConfig=ck.model(
                data.get("runtimeConfig", {}),
                (*loc, "runtimeConfig"),
                RuntimeConfig.check,
                "RuntimeConfig",
            ),
            prevResult=ck.optional(
                data.get("prevResult"), lambda v: ck.dict_(v, (*loc, "prevResult"))
            ),
            dns=opt_model("dns", DNS.check, "DNS"),
            capabilities=ck.optional(data.get("capabilities"), capabilities),
            node=opt_str("node"),
            agent_socket=opt_str("agent_socket"),
            mtu=ck.optional(data.get("mtu"), lambda v: ck.int_(v, (*loc, "mtu"), ge=576, le=65535)),
            ipam=opt_model("ipam", IPAMConfig.check, "IPAMConfig"),
            valid_attachments=attachments(VALID_ATTACHMENTS_KEY, "valid_attachments"),
            legacy_attachments=attachments(LEGACY_ATTACHMENTS_KEY, "legacy_attachments"),
            extra={
                k: v
                for k, v in data.items()
                if k not in _NETCONF_KEYS and _ATTACHMENT_FIELDS.get(k, k) in data
            },
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetConf:
        """The config, or error 7 naming the first field that is wrong."""
        ck = _Checker()
        conf = cls.check(data, (), ck)
        if ck.errors:
            raise CNIError(ErrorCode.INVALID_CONFIG, f"invalid network config: {ck.summary()}")
        return conf

    @property
    def version(self) -> str:
        return negotiate(self.cniVersion, self.cniVersions)

    def labels(self) -> dict[str, str]:
        cni = self.args.cni if self.args else None
        return {lb.key: lb.value for lb in cni.labels} if cni else {}

    def requested_ips(self) -> list[IPv4Address | IPv6Address]:
        """``runtimeConfig.ips`` (the ``ips`` capability) else ``args.cni.ips``, CIDR or plain;
        at most one per family (error 7 otherwise)."""
        raw = list(self.runtimeConfig.ips)
        if not raw and self.args and self.args.cni:
            raw = list(self.args.cni.ips)
        out: list[IPv4Address | IPv6Address] = []
        if not raw:
            return out
        from ipaddress import ip_interface  # noqa: PLC0415 - see the imports

        for item in raw:
            try:
                addr = ip_interface(item.strip()).ip
            except ValueError as err:
                raise CNIError(
                    ErrorCode.INVALID_CONFIG, f"requested IP {item!r} is not an IP address"
                ) from err
            if any(a.version == addr.version for a in out):
                raise CNIError(
                    ErrorCode.INVALID_CONFIG,
                    f"more than one IPv{addr.version} address requested ({', '.join(raw)}); "
                    "a pod gets at most one per family",
                )
            out.append(addr)
        return out

    def attachments(self) -> list[Attachment] | None:
        """GC's valid attachments (None when the runtime sent neither key)."""
        if self.valid_attachments is not None:
            return self.valid_attachments
        return self.legacy_attachments

    def prev_result(self) -> Result | None:
        if self.prevResult is None:
            return None
        return Result.parse(self.prevResult, self.cniVersion)


def decode_config(stdin: str | bytes) -> dict[str, Any]:
    """The config JSON object on stdin; error 6 when it is not one."""
    try:
        data = cjson.loads(stdin) if stdin and stdin.strip() else None
    except ValueError as err:
        raise CNIError(
            ErrorCode.DECODE_FAILURE, f"network config on stdin is not valid JSON: {err}"
        ) from err
    except RecursionError as err:  # the decoder recurses per nesting level
        raise CNIError(
            ErrorCode.DECODE_FAILURE,
            "network config on stdin is nested too deeply to decode (no CNI config nests "
            "beyond a few levels)",
        ) from err
    if data is None:
        raise CNIError(ErrorCode.DECODE_FAILURE, "no network config on stdin")
    if not isinstance(data, dict):
        raise CNIError(ErrorCode.DECODE_FAILURE, "network config on stdin is not a JSON object")
    return data


def parse_config(data: Mapping[str, Any]) -> NetConf:
    """Version first (error 1 before any other complaint, as the spec orders it), then shape
    (error 7 naming the field)."""
    negotiate(data.get("cniVersion"), _str_list(data.get("cniVersions")))
    return NetConf.from_dict(data)


def error_version(data: Mapping[str, Any] | None) -> str:
    """The version an error is written in: the config's when we speak it."""
    version = data.get("cniVersion") if data else None
    return (
        version if isinstance(version, str) and version in SUPPORTED_VERSIONS else (CURRENT_VERSION)
    )


def _str_list(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None
