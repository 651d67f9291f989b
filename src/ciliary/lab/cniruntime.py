"""What a container runtime (containerd/CRI-O through libcni) does with a CNI conflist, in Python.

Why the lab needs it: pods in the lab are plugged in exactly as kubelet's runtime would plug them
in: the node's conflist is read from its conf dir, each plugin of the chain is *executed* (its
binary found on the CNI path, ``CNI_*`` in its environment, its config on stdin) with the previous
plugin's result as ``prevResult``, results are cached so that DEL and CHECK get theirs, DEL runs
the chain in reverse. That makes ``ciliary-cni`` chainable with the reference plugins
(``portmap``, ``bandwidth``, ``tuning``, ``bridge`` + ``ciliary-ipam``) and testable against them.

The libcni rules followed here:

* version: the highest of ``cniVersions`` that this runtime speaks, else ``cniVersion``; every
  plugin config gets the list's ``name`` and that ``cniVersion`` injected.
* ``runtimeConfig`` carries the capability arguments (``ips``, ``portMappings``, ``bandwidth``,
  ...) only for the capabilities a plugin declares in ``capabilities``.
* ADD: in order, each plugin's ``prevResult`` is the previous result, written in the list's
  version. When a plugin fails, DEL runs for it and the ones before it (reverse order) so
  nothing is left half-made, then the error is raised. One ciliary-specific refusal comes
  first: ``bandwidth`` egress shaping after ``ciliary-cni``, which cannot work on our datapath
  (:func:`refuse_unworkable_chain`).
* DEL: reverse order, best effort (every plugin is called; the first error is raised at the
  end); prevResult from the cache from 0.4.0 on; the cache entry goes only when DEL succeeded (a
  retry needs it).
* CHECK: 0.4.0+, in order, with the cached result; not at all with ``disableCheck``.
* GC: first a DEL for every cached attachment of the network that is not valid (libcni's
  synthesized DEL), then GC on every plugin that speaks 1.1.0 (asked with VERSION), with
  ``cni.dev/valid-attachments`` and the legacy ``cni.dev/attachments``; not with ``disableGC``.
  STATUS likewise goes to the plugins that speak 1.1.0.
* cache: ``<conf dir>/../cache/results/<network>-<container id>-<ifname>`` (libcni keeps
  ``/var/lib/cni/results``), holding the result and the arguments of the ADD.

The netns the plugins run in matters: ``portmap`` writes iptables rules, ``bandwidth`` qdiscs and
ifb devices, ``bridge`` its bridge, all in the namespace the plugin runs in. With
``netns_of_runtime`` (the lab node's netns) every ADD/DEL/CHECK/GC/STATUS runs as
``nsenter --net=<netns> -- <plugin>``, and never falls back to the caller's namespace: if the node
netns is gone the call fails.

Result version conversion is written out here rather than imported from ``ciliary.cni``: the
runtime stands in for containerd, a separate program, and must not share the plugin's code (a
shared bug would cancel out in the conformance tests); the layering also keeps ``lab`` and
``cni`` independent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
RUNTIME_ERROR = 0
"""``CNIRuntimeError.code`` for failures of the runtime itself (no plugin error code)."""
INCOMPATIBLE_VERSION = 1
INVALID_CONFIG = 7

_IFACE_FIELDS = {
    "0.3.1": ("name", "mac", "sandbox"),
    "0.4.0": ("name", "mac", "sandbox"),
    "1.0.0": ("name", "mac", "sandbox"),
    "1.1.0": ("name", "mac", "mtu", "sandbox", "socketPath", "pciID"),
}
_ROUTE_FIELDS = {
    "0.3.1": ("dst", "gw"),
    "0.4.0": ("dst", "gw"),
    "1.0.0": ("dst", "gw"),
    "1.1.0": ("dst", "gw", "mtu", "advmss", "priority", "table", "scope"),
}
_CACHE_KIND = "cniCacheV1"


class CNIRuntimeError(Exception):
    """A plugin failed (``code`` is its CNI error code) or the runtime could not run it (0)."""

    def __init__(
        self, code: int, msg: str, plugin: str, details: str = "", stderr: str = ""
    ) -> None:
        self.code = code
        self.msg = msg
        self.plugin = plugin
        self.details = details
        self.stderr = stderr
        where = f"{plugin}: " if plugin else ""
        what = f" (CNI error {code})" if code else ""
        super().__init__(f"{where}{msg}{what}")


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (-1,)


def _at_least(version: str, minimum: str) -> bool:
    return _version_key(version) >= _version_key(minimum)


# --------------------------------------------------------------------------- conflists


def _egress_rate(plugin: Mapping[str, Any], caps: Mapping[str, Any]) -> object:
    """The egress rate a ``bandwidth`` plugin would shape with: its capability argument (when it
    declares the capability) or its static ``egressRate``."""
    declared = plugin.get("capabilities")
    wants = isinstance(declared, dict) and bool(declared.get("bandwidth"))
    given = caps.get("bandwidth") if wants else None
    if isinstance(given, dict) and given.get("egressRate"):
        return given["egressRate"]
    return plugin.get("egressRate")


def refuse_unworkable_chain(conflist: ConfList, caps: Mapping[str, Any]) -> None:
    """Refuse, before anything is made, a chain that cannot work on ciliary's datapath: the
    reference ``bandwidth`` plugin shapes a pod's *egress* with an ``ingress`` qdisc on the pod's
    host-side veth whose filter redirects to an ifb device, but ciliary's programs run on that
    veth's tcx ingress hook, before any qdisc filter, and decide every packet (a tcx verdict ends
    the hook): the plugin's filter would never run and the pod's egress would go unshaped without
    a word. Its ingress shaping (a ``tbf`` root qdisc on the veth) works and is allowed. Error 7
    names the conflict and what to do."""
    types = [str(p.get("type")) for p in conflist.plugins]
    if "ciliary-cni" not in types:
        return
    for plugin in conflist.plugins[types.index("ciliary-cni") + 1 :]:
        rate = _egress_rate(plugin, caps) if plugin.get("type") == "bandwidth" else None
        if rate:
            raise CNIRuntimeError(
                INVALID_CONFIG,
                f"network {conflist.name}: bandwidth cannot shape egress (egressRate {rate}) "
                "after ciliary-cni: its filter on the pod's host-side veth would never run, "
                "ciliary's datapath decides every packet there first (tcx); chain bandwidth for "
                "ingressRate only (egress limits are not supported yet)",
                "bandwidth",
            )


@dataclass(frozen=True)
class ConfList:
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    cni_versions: tuple[str, ...] = ()
    disable_check: bool = False
    disable_gc: bool = False
    path: Path | None = None


def _pick_version(cni_version: object, cni_versions: object, where: str) -> str:
    listed = (
        [v for v in cni_versions if isinstance(v, str)] if isinstance(cni_versions, list) else []
    )
    common = [v for v in listed if v in SUPPORTED_VERSIONS]
    if common:
        return max(common, key=_version_key)
    if isinstance(cni_version, str) and cni_version in SUPPORTED_VERSIONS:
        return cni_version
    raise CNIRuntimeError(
        INCOMPATIBLE_VERSION,
        f"{where}: no CNI version this runtime speaks (cniVersion {cni_version!r}, "
        f"cniVersions {listed}; supported {', '.join(SUPPORTED_VERSIONS)})",
        "",
    )


def load_conflist(path: Path) -> ConfList:
    """A ``.conflist`` (or a single-plugin ``.conf``, as libcni upgrades it)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise CNIRuntimeError(RUNTIME_ERROR, f"cannot read {path}: {err.strerror}", "") from err
    except ValueError as err:
        raise CNIRuntimeError(INVALID_CONFIG, f"{path} is not valid JSON: {err}", "") from err
    if not isinstance(data, dict):
        raise CNIRuntimeError(INVALID_CONFIG, f"{path} is not a JSON object", "")
    if "plugins" not in data and "type" in data:  # a .conf: one plugin, its own name/version
        data = {"cniVersion": data.get("cniVersion"), "name": data.get("name"), "plugins": [data]}
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise CNIRuntimeError(INVALID_CONFIG, f"{path}: the network has no name", "")
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CNIRuntimeError(INVALID_CONFIG, f"{path}: no plugins in network {name}", "")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise CNIRuntimeError(
                INVALID_CONFIG, f"{path}: plugins[{index}] has no type (the plugin binary)", ""
            )
    versions = data.get("cniVersions")
    return ConfList(
        name=name,
        cni_version=_pick_version(data.get("cniVersion"), versions, str(path)),
        plugins=tuple(plugins),
        cni_versions=tuple(v for v in versions if isinstance(v, str))
        if isinstance(versions, list)
        else (),
        disable_check=bool(data.get("disableCheck", False)),
        disable_gc=bool(data.get("disableGC", False)),
        path=path,
    )


# --------------------------------------------------------------------------- results


def convert_result(result: Mapping[str, Any], version: str) -> dict[str, Any]:
    """A plugin result rewritten for ``version`` (0.3.1 ... 1.1.0): ``ips[].version`` only
    before 1.0.0, the 1.1.0 interface and route fields only in 1.1.0."""
    out: dict[str, Any] = {"cniVersion": version}
    ifaces = result.get("interfaces") or []
    if ifaces:
        out["interfaces"] = [
            {k: i[k] for k in _IFACE_FIELDS[version] if i.get(k) not in (None, "")} for i in ifaces
        ]
    ips = []
    for ip in result.get("ips") or []:
        item: dict[str, Any] = {}
        if not _at_least(version, "1.0.0"):
            item["version"] = "6" if ":" in str(ip.get("address", "")) else "4"
        for key in ("address", "gateway", "interface"):
            if ip.get(key) is not None:
                item[key] = ip[key]
        ips.append(item)
    if ips:
        out["ips"] = ips
    routes = [
        {k: r[k] for k in _ROUTE_FIELDS[version] if r.get(k) is not None}
        for r in result.get("routes") or []
    ]
    if routes:
        out["routes"] = routes
    if result.get("dns"):
        out["dns"] = dict(result["dns"])
    return out


# --------------------------------------------------------------------------- the runtime


@dataclass
class _CacheEntry:
    container_id: str
    ifname: str
    network: str
    netns: str
    args: dict[str, str]
    capability_args: dict[str, Any]
    result: dict[str, Any]


@dataclass
class GCReport:
    """What :meth:`CNIRuntime.gc` did: stale attachments DELeted, plugins GC was run on."""

    deleted: list[tuple[str, str]] = field(default_factory=list)
    collected_by: list[str] = field(default_factory=list)


class CNIRuntime:
    """The CNI side of a container runtime for one node: its conf dir, CNI path and netns."""

    def __init__(
        self,
        conf_dir: Path,
        cni_path: Sequence[Path],
        *,
        netns_of_runtime: str | None = None,
        network: str | None = None,
        cache_dir: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.cni_path = [Path(p) for p in cni_path]
        self.netns_of_runtime = netns_of_runtime
        self.network = network
        self.cache_dir = Path(cache_dir) if cache_dir else self.conf_dir.parent / "cache"
        self.timeout = timeout
        self._versions: dict[Path, tuple[str, ...]] = {}

    # -- configuration

    def conflist(self) -> ConfList:
        """The network: the one named ``network``, else the first config file by name (as
        containerd picks the default network)."""
        files = sorted(
            p
            for p in self.conf_dir.glob("*")
            if p.suffix in (".conflist", ".conf", ".json") and p.is_file()
        )
        if not files:
            raise CNIRuntimeError(RUNTIME_ERROR, f"no network config in {self.conf_dir}", "")
        if self.network is None:
            return load_conflist(files[0])
        for path in files:
            with contextlib.suppress(CNIRuntimeError):
                conf = load_conflist(path)
                if conf.name == self.network:
                    return conf
        raise CNIRuntimeError(
            RUNTIME_ERROR, f"no network named {self.network!r} in {self.conf_dir}", ""
        )

    def find_plugin(self, plugin_type: str) -> Path:
        if "/" in plugin_type or plugin_type in ("", ".", ".."):
            raise CNIRuntimeError(
                INVALID_CONFIG, f"invalid plugin type {plugin_type!r}", plugin_type
            )
        for directory in self.cni_path:
            candidate = directory / plugin_type
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise CNIRuntimeError(
            RUNTIME_ERROR,
            f"plugin {plugin_type} not found in CNI path "
            f"{os.pathsep.join(str(p) for p in self.cni_path)}",
            plugin_type,
        )

    def supported_versions(self, plugin_type: str) -> tuple[str, ...]:
        """The plugin's answer to VERSION (asked once per binary)."""
        exe = self.find_plugin(plugin_type)
        if exe not in self._versions:
            out = self._exec(
                {"cniVersion": self.conflist().cni_version},
                "VERSION",
                plugin_type=plugin_type,
                in_runtime_netns=False,
            )
            versions = out.get("supportedVersions") if out else None
            if not isinstance(versions, list):
                raise CNIRuntimeError(
                    RUNTIME_ERROR, "VERSION answered without supportedVersions", plugin_type
                )
            self._versions[exe] = tuple(str(v) for v in versions)
        return self._versions[exe]

    # -- the verbs

    def add(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        *,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run the chain's ADD; returns (and caches) the last plugin's result."""
        conflist = self.conflist()
        version = conflist.cni_version
        args = dict(args or {})
        caps = dict(capability_args or {})
        refuse_unworkable_chain(conflist, caps)
        prev: dict[str, Any] | None = None
        for index, plugin in enumerate(conflist.plugins):
            conf = self._plugin_conf(conflist, plugin, version, prev, caps)
            try:
                result = self._exec(
                    conf, "ADD", container_id=container_id, netns=netns_path,
                    ifname=ifname, args=args,
                )  # fmt: skip
                if not result:
                    raise CNIRuntimeError(
                        RUNTIME_ERROR, "ADD succeeded but printed no result", plugin["type"]
                    )
            except CNIRuntimeError as err:
                log.warning("CNI ADD of %s/%s failed: %s; rolling back", container_id, ifname, err)
                self._del_chain(
                    conflist,
                    conflist.plugins[: index + 1],
                    (container_id, netns_path, ifname),
                    args=args,
                    caps=caps,
                    prev=prev,
                )
                raise
            prev = convert_result(result, version)
        assert prev is not None
        self._write_cache(
            _CacheEntry(container_id, ifname, conflist.name, netns_path, args, caps, prev)
        )
        return prev

    def delete(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        *,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Run the chain's DEL in reverse, best effort; args default to those of the ADD."""
        conflist = self.conflist()
        cached = self._read_cache(conflist.name, container_id, ifname)
        if args is None:
            args = cached.args if cached else {}
        if capability_args is None:
            capability_args = cached.capability_args if cached else {}
        errors = self._del_chain(
            conflist,
            conflist.plugins,
            (container_id, netns_path, ifname),
            args=dict(args),
            caps=dict(capability_args),
            prev=cached.result if cached else None,
        )
        if errors:
            raise errors[0]
        self._remove_cache(conflist.name, container_id, ifname)

    def check(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        *,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Run the chain's CHECK in order with the cached result; the first failure raises."""
        conflist = self.conflist()
        version = conflist.cni_version
        if not _at_least(version, "0.4.0"):
            raise CNIRuntimeError(
                INCOMPATIBLE_VERSION,
                f"network {conflist.name} uses CNI version {version}, which has no CHECK",
                "",
            )
        if conflist.disable_check:
            return
        cached = self._read_cache(conflist.name, container_id, ifname)
        if cached is None:
            raise CNIRuntimeError(
                RUNTIME_ERROR,
                f"no cached result for {container_id}/{ifname} in network {conflist.name}: "
                "CHECK needs the result of its ADD",
                "",
            )
        args = cached.args if args is None else dict(args)
        caps = cached.capability_args if capability_args is None else dict(capability_args)
        prev = convert_result(cached.result, version)
        for plugin in conflist.plugins:
            conf = self._plugin_conf(conflist, plugin, version, prev, caps)
            self._exec(
                conf, "CHECK", container_id=container_id, netns=netns_path,
                ifname=ifname, args=args,
            )  # fmt: skip

    def gc(self, valid: Iterable[tuple[str, str]]) -> GCReport:
        """Release everything of this network that is not a valid ``(container id, ifname)``."""
        conflist = self.conflist()
        keep = {(c, i) for c, i in valid}
        report = GCReport()
        errors: list[CNIRuntimeError] = []
        for entry in self._cache_entries(conflist.name):
            if (entry.container_id, entry.ifname) in keep:
                continue
            try:
                self.delete(entry.container_id, entry.netns, entry.ifname)
                report.deleted.append((entry.container_id, entry.ifname))
            except CNIRuntimeError as err:
                errors.append(err)
        if not conflist.disable_gc:
            attachments = [{"containerID": c, "ifname": i} for c, i in sorted(keep)]
            for plugin in conflist.plugins:
                if "1.1.0" not in self.supported_versions(plugin["type"]):
                    continue
                conf = self._plugin_conf(conflist, plugin, "1.1.0", None, {})
                conf["cni.dev/valid-attachments"] = attachments
                conf["cni.dev/attachments"] = attachments
                try:
                    self._exec(conf, "GC")
                    report.collected_by.append(plugin["type"])
                except CNIRuntimeError as err:
                    errors.append(err)
        if errors:
            raise errors[0]
        return report

    def status(self) -> None:
        """STATUS of every plugin that speaks 1.1.0; the first that is not ready raises."""
        conflist = self.conflist()
        for plugin in conflist.plugins:
            if "1.1.0" in self.supported_versions(plugin["type"]):
                self._exec(self._plugin_conf(conflist, plugin, "1.1.0", None, {}), "STATUS")

    def cached_result(self, container_id: str, ifname: str) -> dict[str, Any] | None:
        cached = self._read_cache(self.conflist().name, container_id, ifname)
        return cached.result if cached else None

    # -- plumbing

    def _del_chain(
        self,
        conflist: ConfList,
        plugins: Sequence[dict[str, Any]],
        attachment: tuple[str, str, str],
        *,
        args: dict[str, str],
        caps: dict[str, Any],
        prev: dict[str, Any] | None,
    ) -> list[CNIRuntimeError]:
        container_id, netns_path, ifname = attachment
        version = conflist.cni_version
        if prev is not None and _at_least(version, "0.4.0"):
            prev = convert_result(prev, version)
        else:
            prev = None  # before 0.4.0 DEL got no prevResult
        errors: list[CNIRuntimeError] = []
        for plugin in reversed(plugins):
            conf = self._plugin_conf(conflist, plugin, version, prev, caps)
            try:
                self._exec(
                    conf, "DEL", container_id=container_id, netns=netns_path,
                    ifname=ifname, args=args,
                )  # fmt: skip
            except CNIRuntimeError as err:
                log.warning("CNI DEL of %s/%s: %s", container_id, ifname, err)
                errors.append(err)
        return errors

    def _plugin_conf(
        self,
        conflist: ConfList,
        plugin: Mapping[str, Any],
        version: str,
        prev: dict[str, Any] | None,
        caps: Mapping[str, Any],
    ) -> dict[str, Any]:
        conf: dict[str, Any] = json.loads(json.dumps(plugin))
        conf["name"] = conflist.name
        conf["cniVersion"] = version
        declared = plugin.get("capabilities") or {}
        runtime_config = {
            key: caps[key] for key, on in declared.items() if on is True and key in caps
        }
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def _exec(
        self,
        conf: Mapping[str, Any],
        command: str,
        *,
        plugin_type: str | None = None,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: Mapping[str, str] | None = None,
        in_runtime_netns: bool = True,
    ) -> dict[str, Any] | None:
        plugin = plugin_type or str(conf["type"])
        exe = self.find_plugin(plugin)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = os.pathsep.join(str(p) for p in self.cni_path)
        if container_id:
            env["CNI_CONTAINERID"] = container_id
        if netns:
            env["CNI_NETNS"] = netns
        if ifname:
            env["CNI_IFNAME"] = ifname
        if args:  # containerd's go-cni always lets plugins ignore keys they do not know
            pairs = {"IgnoreUnknown": "1", **args}
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in pairs.items())
        argv = [str(exe)]
        if in_runtime_netns and self.netns_of_runtime:
            if not Path(self.netns_of_runtime).exists():
                raise CNIRuntimeError(
                    RUNTIME_ERROR,
                    f"the runtime's network namespace {self.netns_of_runtime} does not exist",
                    plugin,
                )
            argv = ["nsenter", f"--net={self.netns_of_runtime}", "--", str(exe)]
        log.debug("CNI %s %s (%s/%s)", command, plugin, container_id, ifname)
        try:
            proc = subprocess.run(
                argv,
                input=json.dumps(conf).encode(),
                capture_output=True,
                env=env,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise CNIRuntimeError(
                RUNTIME_ERROR, f"{command} did not finish within {self.timeout:g}s", plugin
            ) from err
        except OSError as err:
            raise CNIRuntimeError(
                RUNTIME_ERROR, f"cannot execute {argv[0]}: {err.strerror}", plugin
            ) from err
        stdout = proc.stdout.decode(errors="replace").strip()
        stderr = proc.stderr.decode(errors="replace").strip()
        parsed: object = None
        if stdout:
            with contextlib.suppress(ValueError):
                parsed = json.loads(stdout)
        if proc.returncode != 0:
            if isinstance(parsed, dict) and "code" in parsed:
                raise CNIRuntimeError(
                    int(parsed.get("code") or 0),
                    str(parsed.get("msg") or "no message"),
                    plugin,
                    str(parsed.get("details") or ""),
                    stderr,
                )
            last = (stderr or stdout).splitlines()[-1:] or ["no output"]
            raise CNIRuntimeError(
                RUNTIME_ERROR,
                f"{command} exited with status {proc.returncode}: {last[0]}",
                plugin,
                stderr=stderr,
            )
        if not stdout:
            return None
        if not isinstance(parsed, dict):
            raise CNIRuntimeError(
                RUNTIME_ERROR, f"{command} printed something that is not a JSON object", plugin
            )
        return parsed

    # -- the result cache

    def _cache_path(self, network: str, container_id: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{network}-{container_id}-{ifname}"

    def _write_cache(self, entry: _CacheEntry) -> None:
        path = self._cache_path(entry.network, entry.container_id, entry.ifname)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "kind": _CACHE_KIND,
            "containerId": entry.container_id,
            "ifName": entry.ifname,
            "networkName": entry.network,
            "netns": entry.netns,
            "cniArgs": [[k, v] for k, v in entry.args.items()],
            "capabilityArgs": entry.capability_args,
            "result": entry.result,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(body))
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    def _parse_cache(self, path: Path) -> _CacheEntry | None:
        try:
            body = json.loads(path.read_text())
            if body.get("kind") != _CACHE_KIND:
                return None
            return _CacheEntry(
                container_id=str(body["containerId"]),
                ifname=str(body["ifName"]),
                network=str(body["networkName"]),
                netns=str(body.get("netns", "")),
                args={str(k): str(v) for k, v in body.get("cniArgs") or []},
                capability_args=dict(body.get("capabilityArgs") or {}),
                result=dict(body["result"]),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("ignoring unreadable CNI cache entry %s: %s", path, err)
            return None

    def _read_cache(self, network: str, container_id: str, ifname: str) -> _CacheEntry | None:
        path = self._cache_path(network, container_id, ifname)
        return self._parse_cache(path) if path.exists() else None

    def _remove_cache(self, network: str, container_id: str, ifname: str) -> None:
        self._cache_path(network, container_id, ifname).unlink(missing_ok=True)

    def _cache_entries(self, network: str) -> list[_CacheEntry]:
        results = self.cache_dir / "results"
        if not results.is_dir():
            return []
        entries = []
        for path in sorted(results.glob(f"{network}-*")):
            if path.name.endswith(".tmp"):
                continue
            entry = self._parse_cache(path)
            if entry is not None and entry.network == network:
                entries.append(entry)
        return entries
