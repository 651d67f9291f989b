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

Nothing here talks to the agent or imports an HTTP client: ``VERSION`` must answer fast.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    ip_address,
    ip_interface,
    ip_network,
)
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NETWORK_NAME_RE = CONTAINER_ID_RE
IFNAME_MAX = 15
_IFNAME_BAD = re.compile(r"[/:\s]")

VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"

# NS_GET_NSTYPE = _IO(0xb7, 0x3) (linux/nsfs.h): which kind of namespace a file refers to.
_NS_GET_NSTYPE = 0xB703
_CLONE_NEWNET = 0x40000000


class ErrorCode(enum.IntEnum):
    """Well-known error codes (SPEC.md "Error"), and ours from 100 on."""

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


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", "; ", text.strip())


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
        return json.dumps(self.to_dict(version))

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


@dataclass(frozen=True)
class Env:
    """The ``CNI_*`` variables of one invocation, validated for its command."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] | None = None
    path: tuple[str, ...] = ()

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
    if not CONTAINER_ID_RE.match(value):
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
    if _IFNAME_BAD.search(value):
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
    return Env(command, container_id, netns, ifname, args, path)


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


# --------------------------------------------------------------------------- the result


class _Loose(BaseModel):
    """Spec objects: unknown keys tolerated (runtimes and other plugins add their own)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, defer_build=True)


class DNS(_Loose):
    nameservers: list[str] = Field(default_factory=list)
    domain: str | None = None
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)

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


class Interface(_Loose):
    name: str = Field(min_length=1)
    mac: str | None = None
    sandbox: str | None = None
    mtu: int | None = Field(default=None, ge=0)
    socketPath: str | None = None  # noqa: N815 - the spec's spelling
    pciID: str | None = None  # noqa: N815


class IPConfig(_Loose):
    address: str
    gateway: str | None = None
    interface: int | None = Field(default=None, ge=0)
    version: Literal["4", "6"] | None = Field(
        default=None, description="0.3.x/0.4.0 only; derived from the address when written"
    )

    @field_validator("address")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            iface = ip_interface(value)
        except ValueError as err:
            raise ValueError(f"{value!r} is not an address in CIDR notation") from err
        if "/" not in value:
            raise ValueError(f"{value!r} has no prefix length (want CIDR notation)")
        return str(iface)

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ip_address(value))
        except ValueError as err:
            raise ValueError(f"gateway {value!r} is not an IP address") from err

    @property
    def family(self) -> Literal[4, 6]:
        return 4 if isinstance(ip_interface(self.address), IPv4Interface) else 6

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        return ip_interface(self.address).ip


class Route(_Loose):
    dst: str
    gw: str | None = None
    mtu: int | None = Field(default=None, ge=0)
    advmss: int | None = Field(default=None, ge=0)
    priority: int | None = Field(default=None, ge=0)
    table: int | None = Field(default=None, ge=0)
    scope: int | None = Field(default=None, ge=0)

    @field_validator("dst")
    @classmethod
    def _dst(cls, value: str) -> str:
        try:
            return str(ip_network(value, strict=False))
        except ValueError as err:
            raise ValueError(f"route dst {value!r} is not a CIDR") from err


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


class Result(_Loose):
    """A plugin's ADD result, version-neutral; :meth:`to_version` writes it for one version."""

    cniVersion: str = CURRENT_VERSION  # noqa: N815
    interfaces: list[Interface] = Field(default_factory=list)
    ips: list[IPConfig] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    dns: DNS = Field(default_factory=DNS)

    @classmethod
    def parse(cls, data: object, version: str | None = None) -> Result:
        """A result in any supported version (``prevResult``, a cached result, a plugin's
        output). Errors are error 7 (a prevResult is part of the config) naming the field."""
        if not isinstance(data, dict):
            raise CNIError(ErrorCode.INVALID_CONFIG, "a CNI result must be a JSON object")
        version = str(data.get("cniVersion") or version or CURRENT_VERSION)
        check_supported(version)
        try:
            result = cls.model_validate({**data, "cniVersion": version})
        except ValidationError as err:
            raise CNIError(
                ErrorCode.INVALID_CONFIG, f"invalid CNI result: {first_error(err)}"
            ) from err
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


def _pick(model: BaseModel, fields: Iterable[str]) -> dict[str, Any]:
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


class Label(_Loose):
    key: str
    value: str


class CNIConventionArgs(_Loose):
    """``args.cni`` (CONVENTIONS.md): labels and requested IPs passed by the runtime."""

    labels: list[Label] = Field(default_factory=list)
    ips: list[str] = Field(default_factory=list)


class Args(_Loose):
    cni: CNIConventionArgs | None = None


class PortMapping(_Loose):
    hostPort: int = Field(ge=0, le=65535)  # noqa: N815
    containerPort: int = Field(ge=0, le=65535)  # noqa: N815
    protocol: str = "tcp"
    hostIP: str | None = None  # noqa: N815


class Bandwidth(_Loose):
    ingressRate: int | None = Field(default=None, ge=0)  # noqa: N815
    ingressBurst: int | None = Field(default=None, ge=0)  # noqa: N815
    egressRate: int | None = Field(default=None, ge=0)  # noqa: N815
    egressBurst: int | None = Field(default=None, ge=0)  # noqa: N815


class RuntimeConfig(_Loose):
    """``runtimeConfig``: the capabilities a runtime fills in. ``ips`` we use; ``portMappings``
    and ``bandwidth`` are for chained plugins and only checked for shape."""

    ips: list[str] = Field(default_factory=list)
    portMappings: list[PortMapping] = Field(default_factory=list)  # noqa: N815
    bandwidth: Bandwidth | None = None


class IPAMConfig(_Loose):
    type: str | None = None
    node: str | None = None
    agent_socket: str | None = None
    pools: list[str] | None = None
    routes: list[Route] | None = None
    dns: DNS | None = None


class Attachment(_Loose):
    containerID: str = Field(min_length=1)  # noqa: N815
    ifname: str = Field(min_length=1)


class NetConf(_Loose):
    """One plugin's network configuration (what the runtime writes on our stdin)."""

    cniVersion: str  # noqa: N815
    cniVersions: list[str] | None = None  # noqa: N815
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    args: Args | None = None
    runtimeConfig: RuntimeConfig = Field(default_factory=RuntimeConfig)  # noqa: N815
    prevResult: dict[str, Any] | None = None  # noqa: N815
    dns: DNS | None = None
    capabilities: dict[str, bool] | None = None
    # ours
    node: str | None = None
    agent_socket: str | None = None
    mtu: int | None = Field(default=None, ge=576, le=65535)
    ipam: IPAMConfig | None = None
    # GC (1.1.0), and its pre-release spelling that libcni also injects
    valid_attachments: list[Attachment] | None = Field(
        default=None, alias="cni.dev/valid-attachments"
    )
    legacy_attachments: list[Attachment] | None = Field(default=None, alias="cni.dev/attachments")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NETWORK_NAME_RE.match(value):
            raise ValueError(
                "must start with a letter or digit followed by letters, digits, '_', '.' or '-'"
            )
        return value

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
        data = json.loads(stdin) if stdin and stdin.strip() else None
    except ValueError as err:
        raise CNIError(
            ErrorCode.DECODE_FAILURE, f"network config on stdin is not valid JSON: {err}"
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
    try:
        return NetConf.model_validate(dict(data))
    except ValidationError as err:
        raise CNIError(
            ErrorCode.INVALID_CONFIG, f"invalid network config: {first_error(err)}"
        ) from err


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


def first_error(err: ValidationError) -> str:
    errors = err.errors()
    if not errors:  # pragma: no cover - pydantic always reports one
        return str(err).splitlines()[0]
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "<config>"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}"
