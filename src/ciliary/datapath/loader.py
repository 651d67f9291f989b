"""One node's datapath: the compiled objects loaded once, their maps and programs pinned under
``/sys/fs/bpf/ciliary/<node>/``, the attach/detach of an endpoint's lxc device and of the tunnel
device's program.

One object per attach point, as Cilium's: ``bpf_lxc.o`` (the endpoints' lxc devices) and
``bpf_overlay.o`` next to it (``ciliary_vxlan``'s ingress) and ``bpf_host.o`` (the native
devices' ingress and egress: BPF masquerade; ``ciliary_host``'s egress: the node's own packets into
the tunnel). They declare the same maps with the same pins, so
each load reuses what the first created: one conntrack table, one ipcache, one events ring per
node whichever program saw a packet; the NAT maps are pinned too, and so are the service maps
(``ciliary_lb{4,6}_*``, sized by ``lb_max``: ``--bpf-lb-map-max``), which every object reads.

Restart contract: maps are opened through their pins (libbpf reuses a pinned map of the same
shape), so a restarted agent sees the conntrack, endpoint and ipcache state the datapath kept
using while it was down. The programs run on the devices' tcx hooks (libbpf.tcx_attach, as
upstream's on kernels that have them): re-attaching replaces the old ones atomically
(``BPF_F_REPLACE``): traffic never passes through an unattached device.

A restarted agent takes the pinned programs again instead of loading them anew (each load is
seconds of the verifier, ~2.7 s of CPU per node here) only when they are the programs a load
would give: the pins were made from objects of the same content (their SHA-256, recorded as
the name of an empty directory in the pin directory, ``programs-<digest>``, made after the
programs were pinned and removed before a load replaces them) and every map each pinned
program uses is one of the maps this load holds (``bpf_prog_info.map_ids``; the objects have
no other data than their pinned maps, so a program is its instructions and its maps). Anything
else (other objects, a map made anew, a pin missing) loads the programs as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ciliary.datapath import sklookup, socketlb
from ciliary.datapath.libbpf import (
    BPFError,
    BPFObject,
    Map,
    prog_from_pin,
    prog_map_ids,
    tcx_attach,
    tcx_attached,
    tcx_detach,
)
from ciliary.datapath.linux import bpffs
from ciliary.datapath.maps.config import ConfigMap
from ciliary.datapath.maps.conntrack import CTMap
from ciliary.datapath.maps.endpoints import EndpointMap
from ciliary.datapath.maps.events import EventsLostMap
from ciliary.datapath.maps.ipcache import IPCACHE_MAP, IPCACHE_REVISION_MAP, IPCacheMap
from ciliary.datapath.maps.lb import LB_MAPS, LBMaps
from ciliary.datapath.maps.nat import NAT_CONFIG_MAP, NAT_MAPS, NATConfigMap, NATRecord, nat_records
from ciliary.datapath.maps.policy import REVISION_MAP, PolicyMaps, PolicyRevision
from ciliary.datapath.maps.revision import Revision
from ciliary.datapath.maps.tunnel import TUNNEL_DIRECT_MAP, TunnelDirectMap

BPF_FS = Path("/sys/fs/bpf")
PIN_ROOT = BPF_FS / "ciliary"
FROM_CONTAINER = "cil_from_container"
TO_CONTAINER = "cil_to_container"
FROM_OVERLAY = "cil_from_overlay"
OVERLAY_OBJECT = "bpf_overlay.o"
TO_NETDEV = "cil_to_netdev"
FROM_NETDEV = "cil_from_netdev"
FROM_HOST = "cil_from_host"
HOST_OBJECT = "bpf_host.o"
EVENTS_MAP = "ciliary_events"
log = logging.getLogger("ciliary.datapath.loader")

PROGRAMS_MARKER = "programs-"
"""The pin directory's ``programs-<digest>``: its programs were pinned from objects of this
content (see the module's docstring)."""


def default_object_dir() -> Path:
    """``bpf/`` of the checkout (the package is installed editable from it), or $CILIARY_BPF_DIR."""
    env = os.environ.get("CILIARY_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "bpf"


@dataclass(frozen=True)
class MapUsage:
    name: str
    entries: int
    max_entries: int


class NodeDatapath:
    """The loaded datapath of one node. Not thread-safe: one owner (the agent)."""

    def __init__(
        self, object_path: Path, pin_dir: Path, *, ct_max: int = 65536, lb_max: int = 65536
    ) -> None:
        self.object_path = object_path
        self.overlay_object_path = object_path.parent / OVERLAY_OBJECT
        self.host_object_path = object_path.parent / HOST_OBJECT
        self.pin_dir = pin_dir
        self._ct_max = ct_max
        self._lb_max = lb_max
        self._obj: BPFObject | None = None
        self._overlay: BPFObject | None = None
        self._host: BPFObject | None = None
        self._maps: dict[str, Map] = {}
        self._prog_fds: dict[str, int] = {}
        """program → fd: borrowed from the objects after a load, owned when taken from pins"""
        self._owned_prog_fds: list[int] = []
        self.reused_programs = False
        """Whether the last load took the pinned programs instead of loading them."""

    def _open(self, path: Path) -> BPFObject:
        sizes = {"ciliary_ct": self._ct_max}
        sizes.update({name: self._lb_max for names in LB_MAPS.values() for name in names})
        return BPFObject.open(path, pin_dir=self.pin_dir, max_entries=sizes)

    @staticmethod
    def _load_all(objs: list[BPFObject], programs: bool = True) -> None:
        """Load ``objs``: the first alone, then the others in parallel threads (the verifier's
        passes run without the GIL, bpf_lxc's the longest) when the first declares every map
        two of the others share, so that it creates (or reuses) all their pins and the parallel
        loads only reuse them (two creating the same pinned map would race); else one by one."""
        first, rest = objs[0], objs[1:]
        first.load(programs=programs)
        shared = {
            name
            for i, a in enumerate(rest)
            for b in rest[i + 1 :]
            for name in set(a.map_names()) & set(b.map_names())
        }
        if len(rest) < 2 or not shared <= set(first.map_names()):
            for obj in rest:
                obj.load(programs=programs)
            return
        with ThreadPoolExecutor(max_workers=len(rest), thread_name_prefix="bpf-load") as pool:
            futures = [pool.submit(obj.load, programs=programs) for obj in rest]
        for future in futures:
            future.result()  # the first failure, raised

    def load(self, *, programs: bool = True) -> None:
        """Creates (or reuses) the node's pinned maps and loads and pins its programs;
        ``programs=False``: the maps only (a holder of the maps, e.g. a test of the service
        tables or of socket-LB, which loads its own object), nothing to attach."""
        for path in (self.object_path, self.overlay_object_path, self.host_object_path):
            if not path.exists():  # both checked before anything is created or pinned
                raise FileNotFoundError(
                    f"BPF object {path} not found (run `make -C bpf` / `make setup`)"
                )
        bpffs.ensure_mounted()
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        paths = (self.overlay_object_path, self.object_path, self.host_object_path)
        marker = self.pin_dir / (PROGRAMS_MARKER + _digest(paths))
        opened: list[BPFObject] = []
        try:
            opened = [self._open(path) for path in paths]
            overlay, obj, host = opened
            self.reused_programs = False
            if programs and marker.is_dir():
                self.reused_programs = self._take_pinned(opened)
                log.info(
                    "datapath: %s",
                    "the pinned programs taken (same objects, same maps)"
                    if self.reused_programs
                    else "the pinned programs not taken (a map made anew, a pin gone): loading",
                )
                if not self.reused_programs:  # their maps-only loads: open them afresh
                    for o in opened:
                        o.close()
                    opened = [self._open(path) for path in paths]
                    overlay, obj, host = opened
            if programs and not self.reused_programs:
                for old in self.pin_dir.glob(PROGRAMS_MARKER + "*"):
                    old.rmdir()  # before the pins change: a load cut short leaves none
                # bpf_overlay.o declares every shared map: its load makes their pins, then
                # bpf_lxc.o and bpf_host.o load together
                self._load_all([overlay, obj, host])
                for o, names in zip(opened, _PROGRAMS, strict=True):
                    for prog in names:
                        o.pin_program(prog, self.pin_dir / prog)
                        self._prog_fds[prog] = o.program_fd(prog)
                marker.mkdir()
            elif not programs:
                self._load_all([overlay, obj, host], programs=False)
            self._maps = {name: obj.map(name) for name in obj.map_names()}
            for name in (NAT_CONFIG_MAP, *NAT_MAPS.values()):
                self._maps[name] = host.map(name)
        except BaseException:
            for o in opened:
                o.close()
            self._close_programs()
            raise
        self._obj = obj
        self._overlay = overlay
        self._host = host
        self.nat_config = NATConfigMap(self._maps[NAT_CONFIG_MAP])
        self.endpoints = EndpointMap(self._maps["ciliary_lxc"])
        ipcache_revision = Revision(self._maps[IPCACHE_REVISION_MAP])
        self.ipcache = IPCacheMap(self._maps[IPCACHE_MAP], ipcache_revision)
        # the programs' cache of the ipcache outlives an agent, its trie may be made anew
        # (another layout): nothing cached before this agent's first write stays valid
        ipcache_revision.bump()
        self.ct = CTMap(self._maps["ciliary_ct"])
        self.config = ConfigMap(self._maps["ciliary_config"])
        self.tunnel_direct = TunnelDirectMap(self._maps[TUNNEL_DIRECT_MAP])
        self.events_lost = EventsLostMap(self._maps["ciliary_events_lost"])
        self.policy = PolicyMaps(
            self._maps["ciliary_policy"], self.pin_dir, PolicyRevision(self._maps[REVISION_MAP])
        )
        self.lb = LBMaps(self._maps)

    def _take_pinned(self, opened: list[BPFObject]) -> bool:
        """The maps loaded (only) and the pinned programs taken, if each uses only maps these
        objects hold now; False (nothing taken) otherwise."""
        try:
            self._load_all(opened, programs=False)
            for o, names in zip(opened, _PROGRAMS, strict=True):
                held = set()
                for name in o.map_names():
                    with o.map(name) as m:
                        held.add(m.info.id)
                for prog in names:
                    fd = prog_from_pin(self.pin_dir / prog)
                    self._owned_prog_fds.append(fd)
                    self._prog_fds[prog] = fd
                    if not set(prog_map_ids(fd)) <= held:
                        raise LookupError(f"pinned {prog} uses maps no longer pinned")
        except (BPFError, OSError, LookupError):
            self._close_programs()
            return False
        return True

    def _close_programs(self) -> None:
        for fd in self._owned_prog_fds:
            os.close(fd)
        self._owned_prog_fds = []
        self._prog_fds = {}

    def _program_fd(self, name: str) -> int:
        fd = self._prog_fds.get(name)
        if fd is None:
            raise RuntimeError("datapath not loaded")
        return fd

    def load_in_background(self) -> Future[None]:
        """:meth:`load` in a thread of its own, started now; the future is its outcome. The
        verifier's seconds pass without the GIL, so an agent starts its load first and imports
        its modules, builds its components and waits for its pod CIDRs meanwhile; nothing may
        use the datapath before the future is done."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpf-load-node")
        try:
            return pool.submit(self.load)
        finally:
            pool.shutdown(wait=False)

    @property
    def programs(self) -> list[str]:
        return [FROM_CONTAINER, TO_CONTAINER, FROM_OVERLAY, TO_NETDEV, FROM_NETDEV, FROM_HOST]

    @property
    def events_map(self) -> Map:
        return self._maps[EVENTS_MAP]

    def attach(self, ifindex: int) -> None:
        """Attach both endpoint programs to an lxc device (replacing what is there)."""
        tcx_attach(ifindex, self._program_fd(FROM_CONTAINER), "ingress")
        tcx_attach(ifindex, self._program_fd(TO_CONTAINER), "egress")

    def detach(self, ifindex: int) -> None:
        tcx_detach(ifindex, self._program_fd(FROM_CONTAINER), "ingress")
        tcx_detach(ifindex, self._program_fd(TO_CONTAINER), "egress")

    def is_attached(self, ifindex: int) -> bool:
        return tcx_attached(ifindex, self._program_fd(FROM_CONTAINER), "ingress") and tcx_attached(
            ifindex, self._program_fd(TO_CONTAINER), "egress"
        )

    def attach_overlay(self, ifindex: int) -> None:
        """Attach cil_from_overlay to the tunnel device's ingress (replacing what is there)."""
        tcx_attach(ifindex, self._program_fd(FROM_OVERLAY), "ingress")

    def overlay_attached(self, ifindex: int) -> bool:
        return tcx_attached(ifindex, self._program_fd(FROM_OVERLAY), "ingress")

    def attach_host(self, ifindex: int) -> None:
        """Attach the native device's programs (BPF masquerade; in native routing mode also the
        delivery of packets from the network to local endpoints), egress first: a reply can only
        need cil_from_netdev once cil_to_netdev translated its request. Each replaces what is
        there atomically."""
        tcx_attach(ifindex, self._program_fd(TO_NETDEV), "egress")
        tcx_attach(ifindex, self._program_fd(FROM_NETDEV), "ingress")

    def attach_from_host(self, ifindex: int) -> None:
        """Attach cil_from_host to ``ciliary_host``'s egress (tunnel mode; replacing what is
        there): the node's packets routed to remote pods are tunnelled there."""
        tcx_attach(ifindex, self._program_fd(FROM_HOST), "egress")

    def detach_from_host(self, ifindex: int) -> None:
        tcx_detach(ifindex, self._program_fd(FROM_HOST), "egress")

    def detach_host(self, ifindex: int) -> None:
        tcx_detach(ifindex, self._program_fd(TO_NETDEV), "egress")
        tcx_detach(ifindex, self._program_fd(FROM_NETDEV), "ingress")

    def attach_socket_lb(self, cgroup: Path) -> None:
        """Socket-LB: load ``bpf_sock.o`` (the same pinned service maps) and attach its
        programs to ``cgroup`` (datapath.socketlb: pinned links, replaced in place on restart);
        the object is closed again, the links hold its programs."""
        path = self.object_path.parent / socketlb.SOCK_OBJECT
        if not path.exists():
            raise FileNotFoundError(f"BPF object {path} not found (run `make -C bpf`)")
        obj = self._open(path)
        try:
            obj.load()
            socketlb.attach(obj, self.pin_dir, cgroup)
        finally:
            obj.close()

    def detach_socket_lb(self) -> bool:
        """Detach socket-LB (the tc-level LB alone translates); True when it was attached."""
        return socketlb.detach(self.pin_dir)

    def attach_proxy_lookup(self) -> sklookup.ProxySocketMap:
        """The L7 proxies' listener selection: load ``bpf_sk_lookup.o`` (the pinned conntrack
        table) and attach its program to the agent's network namespace (datapath.sklookup: a
        pinned link, replaced in place on restart); returns its socket map."""
        path = self.object_path.parent / sklookup.OBJECT
        if not path.exists():
            raise FileNotFoundError(f"BPF object {path} not found (run `make -C bpf`)")
        obj = BPFObject.open(path, pin_dir=self.pin_dir, max_entries={"ciliary_ct": self._ct_max})
        try:
            obj.load()
            sklookup.attach(obj, self.pin_dir)
            return sklookup.ProxySocketMap(obj.map(sklookup.SOCKETS_MAP))
        finally:
            obj.close()

    def nat_entries(self) -> list[NATRecord]:
        """Both families' NAT state (``ciliary bpf nat list``)."""
        out: list[NATRecord] = []
        for family, name in NAT_MAPS.items():
            out += nat_records(self._maps[name], family)
        return out

    def map_usage(self) -> list[MapUsage]:
        out = []
        for name, m in sorted(self._maps.items()):
            info = m.info
            if name in (EVENTS_MAP,) or name.endswith(".bss") or name.endswith(".rodata"):
                continue
            if name in (
                "ciliary_config", "ciliary_events_lost", "ciliary_policy", REVISION_MAP,
                NAT_CONFIG_MAP,
            ):  # fmt: skip
                continue
            out.append(MapUsage(name, m.count(), info.max_entries))
        return out

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps = {}
        self._close_programs()
        for obj in (self._obj, self._overlay, self._host):
            if obj is not None:
                obj.close()
        self._obj = self._overlay = self._host = None


_PROGRAMS = ((FROM_OVERLAY,), (FROM_CONTAINER, TO_CONTAINER), (TO_NETDEV, FROM_NETDEV, FROM_HOST))
"""The programs of bpf_overlay.o, bpf_lxc.o and bpf_host.o, in the order ``load`` opens them."""


def _digest(paths: tuple[Path, ...]) -> str:
    """SHA-256 of the objects' contents, in order (the first 16 hex digits)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def remove_pins(pin_dir: Path) -> None:
    """Remove a node's pins (attached programs stay alive only while attached), and the shared
    ``/sys/fs/bpf/ciliary`` once no node's are left in it, so a bpffs that setup mounted can be
    unmounted again."""
    if pin_dir.exists():
        shutil.rmtree(pin_dir)
    if pin_dir.parent == PIN_ROOT:
        with contextlib.suppress(OSError):  # absent, or another node's pins are there
            PIN_ROOT.rmdir()
