"""The one module that binds ``libbpf.so.1``: every ctypes prototype and C struct of libbpf's ABI.

One module owns the C ABI so that a wrong ``argtypes``, a forgotten ``sz`` field or a libbpf upgrade
has exactly one place to be checked, and so that nothing else in ciliary ever handles a raw
pointer. What leaves this module is typed Python: file descriptors wrapped in :class:`Map`,
kernel/libbpf failures as :class:`BPFError` subclasses chosen by errno, map keys and values as
``bytes`` (their struct codecs live in :mod:`ciliary.datapath.maps`).

Conventions of libbpf >= 1.0 this module relies on: int-returning calls return ``-errno``;
pointer-returning calls return NULL and set ``errno``. The prototypes and opts structs follow
``/usr/include/bpf/{libbpf,bpf,btf}.h`` of libbpf 1.1 (Debian 12).

libbpf's print callback is routed into :mod:`logging` (logger ``ciliary.datapath.libbpf``) at
import; while an object is opened or loaded the calling thread's messages are also collected, so
failures carry libbpf's explanation and the verifier log.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import logging
import mmap
import os
import platform
import re
import select
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

__all__ = [
    "BPF_ANY",
    "BPF_CGROUP_INET4_CONNECT",
    "BPF_CGROUP_INET4_GETPEERNAME",
    "BPF_CGROUP_INET6_CONNECT",
    "BPF_CGROUP_INET6_GETPEERNAME",
    "BPF_CGROUP_UDP4_RECVMSG",
    "BPF_CGROUP_UDP4_SENDMSG",
    "BPF_CGROUP_UDP6_RECVMSG",
    "BPF_CGROUP_UDP6_SENDMSG",
    "BPF_EXIST",
    "BPF_F_NO_PREALLOC",
    "BPF_MAP_TYPE_ARRAY",
    "BPF_MAP_TYPE_HASH",
    "BPF_MAP_TYPE_LPM_TRIE",
    "BPF_MAP_TYPE_LRU_HASH",
    "BPF_MAP_TYPE_PERCPU_ARRAY",
    "BPF_MAP_TYPE_RINGBUF",
    "BPF_MAP_TYPE_SOCKHASH",
    "BPF_NOEXIST",
    "BPF_SK_LOOKUP",
    "RINGBUF_BUSY_BIT",
    "RINGBUF_DISCARD_BIT",
    "RINGBUF_HDR_SZ",
    "VERIFIER_INSN_LIMIT",
    "BPFError",
    "BPFExistsError",
    "BPFInvalidError",
    "BPFNoSpaceError",
    "BPFNotFoundError",
    "BPFObject",
    "BPFPermissionError",
    "BPFVerifierError",
    "Map",
    "MapInfo",
    "RingBuffer",
    "StructLayout",
    "TcDirection",
    "TestRun",
    "bpf_error",
    "libbpf_version",
    "link_cgroup_id",
    "link_create",
    "link_netns_ino",
    "link_update",
    "num_possible_cpus",
    "obj_pin",
    "prog_from_pin",
    "prog_map_ids",
    "prog_test_run_skb",
    "ring_records",
    "struct_layout",
    "tc_attach",
    "tc_detach",
    "tc_hook_destroy",
    "tc_query",
    "tcx_attach",
    "tcx_attached",
    "tcx_detach",
    "tcx_programs",
    "tcx_query",
]

log = logging.getLogger(__name__)

_LIBBPF = ctypes.CDLL("libbpf.so.1", use_errno=True)
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)

# ---------------------------------------------------------------------------------------------
# Constants (linux/bpf.h, libbpf.h)
# ---------------------------------------------------------------------------------------------

BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2

BPF_F_NO_PREALLOC: Final = 1

BPF_MAP_TYPE_HASH: Final = 1
BPF_MAP_TYPE_ARRAY: Final = 2
BPF_MAP_TYPE_PERCPU_HASH: Final = 5
BPF_MAP_TYPE_PERCPU_ARRAY: Final = 6
BPF_MAP_TYPE_LRU_HASH: Final = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH: Final = 10
BPF_MAP_TYPE_LPM_TRIE: Final = 11
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: Final = 21
BPF_MAP_TYPE_SOCKHASH: Final = 18
BPF_MAP_TYPE_RINGBUF: Final = 27

# enum bpf_attach_type: the cgroup sock_addr hooks of socket-LB (bpf_sock.c)
BPF_CGROUP_INET4_CONNECT: Final = 10
BPF_CGROUP_INET6_CONNECT: Final = 11
BPF_CGROUP_UDP4_SENDMSG: Final = 14
BPF_CGROUP_UDP6_SENDMSG: Final = 15
BPF_CGROUP_UDP4_RECVMSG: Final = 19
BPF_CGROUP_UDP6_RECVMSG: Final = 20
BPF_CGROUP_INET4_GETPEERNAME: Final = 29
BPF_CGROUP_INET6_GETPEERNAME: Final = 30
# the L7 proxies' listener selection on a network namespace (bpf_sk_lookup.c)
BPF_SK_LOOKUP: Final = 36
_BPF_LINK_TYPE_CGROUP: Final = 3
_BPF_LINK_TYPE_NETNS: Final = 5

_PERCPU_MAP_TYPES: Final = frozenset(
    {
        BPF_MAP_TYPE_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        BPF_MAP_TYPE_LRU_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
    }
)

_BPF_TC_INGRESS: Final = 1 << 0
_BPF_TC_EGRESS: Final = 1 << 1
_BPF_TC_F_REPLACE: Final = 1 << 0
# tcx (Linux 6.6): enum bpf_attach_type's BPF_TCX_INGRESS / BPF_TCX_EGRESS, and BPF_F_REPLACE
_BPF_TCX_INGRESS: Final = 46
_BPF_TCX_EGRESS: Final = 47
_BPF_F_REPLACE: Final = 1 << 2

# the ring buffer's record header (linux/bpf.h BPF_RINGBUF_*): ``len`` with these two flags, then
# ``pg_off`` (the kernel's, of the record's page); records are 8-byte aligned
RINGBUF_BUSY_BIT: Final = 1 << 31
RINGBUF_DISCARD_BIT: Final = 1 << 30
RINGBUF_HDR_SZ: Final = 8
_RINGBUF_HDR: Final = struct.Struct("=I")

_BTF_KIND_INT: Final = 1
_BTF_KIND_STRUCT: Final = 4

# Kernel-internal "not supported" (include/linux/errno.h); bpf(2) returns it for batch ops on map
# types without them (e.g. LPM trie).
ENOTSUPP: Final = 524
# libbpf's own error codes start here (libbpf.h: enum libbpf_errno).
_LIBBPF_ERRNO_BASE: Final = 4000

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class BPFError(OSError):
    """A failed libbpf/bpf(2) call. ``op`` names the libbpf function, ``errno`` the cause and
    ``log`` holds libbpf's own messages when they were captured (open/load)."""

    def __init__(self, err: int, message: str, *, op: str, log: str = "") -> None:
        super().__init__(err, message)
        self.op = op
        self.log = log

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.op}: {self.strerror}"


class BPFNotFoundError(BPFError):
    """ENOENT: no such key, pin, program or struct."""


class BPFExistsError(BPFError):
    """EEXIST: the key, pin or tc filter already exists."""


class BPFPermissionError(BPFError):
    """EPERM/EACCES: missing capabilities or locked-down kernel."""


class BPFNoSpaceError(BPFError):
    """E2BIG/ENOSPC/ENOMEM: the map is full, an index is out of range or memory ran out."""


class BPFInvalidError(BPFError):
    """EINVAL: bad size, flags or arguments (including mismatched pinned maps)."""


class BPFVerifierError(BPFError):
    """A program was rejected at load; ``verifier_log`` is the kernel verifier's explanation."""

    def __init__(
        self, err: int, message: str, *, op: str, log: str = "", verifier_log: str = ""
    ) -> None:
        super().__init__(err, message, op=op, log=log)
        self.verifier_log = verifier_log


_ERRNO_CLASSES: Final[Mapping[int, type[BPFError]]] = {
    _errno.ENOENT: BPFNotFoundError,
    _errno.EEXIST: BPFExistsError,
    _errno.EPERM: BPFPermissionError,
    _errno.EACCES: BPFPermissionError,
    _errno.E2BIG: BPFNoSpaceError,
    _errno.ENOSPC: BPFNoSpaceError,
    _errno.ENOMEM: BPFNoSpaceError,
    _errno.EINVAL: BPFInvalidError,
}


def _errno_text(err: int) -> str:
    if err == ENOTSUPP:
        return "Operation not supported (ENOTSUPP)"
    if err >= _LIBBPF_ERRNO_BASE:
        buf = ctypes.create_string_buffer(256)
        if _C.libbpf_strerror(err, buf, len(buf)) == 0:
            return buf.value.decode(errors="replace")
    return os.strerror(err)


def bpf_error(err: int, op: str, detail: str = "", *, log: str = "") -> BPFError:
    """The exception for a libbpf failure: ``err`` is an errno or a negative libbpf return."""
    err = abs(err) or _errno.EINVAL
    message = _errno_text(err) + (f": {detail}" if detail else "")
    return _ERRNO_CLASSES.get(err, BPFError)(err, message, op=op, log=log)


def _check(ret: int, op: str, detail: str = "") -> int:
    if ret < 0:
        raise bpf_error(ret, op, detail)
    return ret


def _check_ptr(ptr: int | None, op: str, detail: str = "", *, log: str = "") -> int:
    if not ptr:
        raise bpf_error(ctypes.get_errno(), op, detail, log=log)
    return ptr


# ---------------------------------------------------------------------------------------------
# Prototypes (argtypes/restype exactly as in libbpf 1.1 headers)
# ---------------------------------------------------------------------------------------------

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def _proto(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
    fn: Any = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    bound: Callable[..., Any] = fn
    return bound


_vp, _cp, _int, _u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
_u32p = ctypes.POINTER(ctypes.c_uint32)


class _C:
    """Raw libbpf/libc entry points; only this module calls them."""

    libbpf_major_version = _proto(_LIBBPF, "libbpf_major_version", _u32)
    libbpf_minor_version = _proto(_LIBBPF, "libbpf_minor_version", _u32)
    libbpf_strerror = _proto(_LIBBPF, "libbpf_strerror", _int, _int, _cp, ctypes.c_size_t)
    libbpf_set_print = _proto(_LIBBPF, "libbpf_set_print", _vp, _PRINT_FN)
    libbpf_num_possible_cpus = _proto(_LIBBPF, "libbpf_num_possible_cpus", _int)

    bpf_object__open_file = _proto(_LIBBPF, "bpf_object__open_file", _vp, _cp, _vp)
    bpf_object__load = _proto(_LIBBPF, "bpf_object__load", _int, _vp)
    bpf_object__close = _proto(_LIBBPF, "bpf_object__close", None, _vp)
    bpf_object__next_map = _proto(_LIBBPF, "bpf_object__next_map", _vp, _vp, _vp)
    bpf_object__next_program = _proto(_LIBBPF, "bpf_object__next_program", _vp, _vp, _vp)
    bpf_map__name = _proto(_LIBBPF, "bpf_map__name", _cp, _vp)
    bpf_map__fd = _proto(_LIBBPF, "bpf_map__fd", _int, _vp)
    bpf_map__is_internal = _proto(_LIBBPF, "bpf_map__is_internal", ctypes.c_bool, _vp)
    bpf_map__set_pin_path = _proto(_LIBBPF, "bpf_map__set_pin_path", _int, _vp, _cp)
    bpf_map__set_max_entries = _proto(_LIBBPF, "bpf_map__set_max_entries", _int, _vp, _u32)
    bpf_program__name = _proto(_LIBBPF, "bpf_program__name", _cp, _vp)
    bpf_program__fd = _proto(_LIBBPF, "bpf_program__fd", _int, _vp)
    bpf_program__pin = _proto(_LIBBPF, "bpf_program__pin", _int, _vp, _cp)
    bpf_program__set_autoload = _proto(
        _LIBBPF, "bpf_program__set_autoload", _int, _vp, ctypes.c_bool
    )
    bpf_program__set_log_level = _proto(_LIBBPF, "bpf_program__set_log_level", _int, _vp, _u32)
    bpf_program__set_log_buf = _proto(
        _LIBBPF, "bpf_program__set_log_buf", _int, _vp, _vp, ctypes.c_size_t
    )

    bpf_obj_pin = _proto(_LIBBPF, "bpf_obj_pin", _int, _int, _cp)
    bpf_link_create = _proto(_LIBBPF, "bpf_link_create", _int, _int, _int, _int, _vp)
    bpf_link_update = _proto(_LIBBPF, "bpf_link_update", _int, _int, _int, _vp)
    bpf_map_create = _proto(
        _LIBBPF, "bpf_map_create", _int, ctypes.c_int, _cp, _u32, _u32, _u32, _vp
    )
    bpf_obj_get = _proto(_LIBBPF, "bpf_obj_get", _int, _cp)
    bpf_map_get_fd_by_id = _proto(_LIBBPF, "bpf_map_get_fd_by_id", _int, _u32)
    bpf_obj_get_info_by_fd = _proto(_LIBBPF, "bpf_obj_get_info_by_fd", _int, _int, _vp, _u32p)
    bpf_map_lookup_elem = _proto(_LIBBPF, "bpf_map_lookup_elem", _int, _int, _vp, _vp)
    bpf_map_update_elem = _proto(
        _LIBBPF, "bpf_map_update_elem", _int, _int, _vp, _vp, ctypes.c_uint64
    )
    bpf_map_delete_elem = _proto(_LIBBPF, "bpf_map_delete_elem", _int, _int, _vp)
    bpf_map_get_next_key = _proto(_LIBBPF, "bpf_map_get_next_key", _int, _int, _vp, _vp)
    bpf_map_lookup_batch = _proto(
        _LIBBPF, "bpf_map_lookup_batch", _int, _int, _vp, _vp, _vp, _vp, _u32p, _vp
    )
    bpf_map_delete_batch = _proto(_LIBBPF, "bpf_map_delete_batch", _int, _int, _vp, _u32p, _vp)
    bpf_map_update_batch = _proto(_LIBBPF, "bpf_map_update_batch", _int, _int, _vp, _vp, _u32p, _vp)

    bpf_tc_hook_create = _proto(_LIBBPF, "bpf_tc_hook_create", _int, _vp)
    bpf_tc_hook_destroy = _proto(_LIBBPF, "bpf_tc_hook_destroy", _int, _vp)
    bpf_tc_attach = _proto(_LIBBPF, "bpf_tc_attach", _int, _vp, _vp)
    bpf_tc_detach = _proto(_LIBBPF, "bpf_tc_detach", _int, _vp, _vp)
    bpf_tc_query = _proto(_LIBBPF, "bpf_tc_query", _int, _vp, _vp)
    bpf_prog_attach_opts = _proto(_LIBBPF, "bpf_prog_attach_opts", _int, _int, _int, _int, _vp)
    bpf_prog_detach2 = _proto(_LIBBPF, "bpf_prog_detach2", _int, _int, _int, _int)
    bpf_prog_query = _proto(_LIBBPF, "bpf_prog_query", _int, _int, _int, _u32, _u32p, _vp, _u32p)
    bpf_prog_get_fd_by_id = _proto(_LIBBPF, "bpf_prog_get_fd_by_id", _int, _u32)
    bpf_prog_test_run_opts = _proto(_LIBBPF, "bpf_prog_test_run_opts", _int, _int, _vp)

    btf__parse_elf = _proto(_LIBBPF, "btf__parse_elf", _vp, _cp, _vp)
    btf__free = _proto(_LIBBPF, "btf__free", None, _vp)
    btf__find_by_name_kind = _proto(
        _LIBBPF, "btf__find_by_name_kind", ctypes.c_int32, _vp, _cp, _u32
    )
    btf__type_by_id = _proto(_LIBBPF, "btf__type_by_id", _vp, _vp, _u32)
    btf__resolve_size = _proto(_LIBBPF, "btf__resolve_size", ctypes.c_int64, _vp, _u32)
    btf__name_by_offset = _proto(_LIBBPF, "btf__name_by_offset", _cp, _vp, _u32)

    vsnprintf = _proto(_LIBC, "vsnprintf", _int, _vp, ctypes.c_size_t, _cp, _vp)


def libbpf_version() -> str:
    """The runtime libbpf version, e.g. ``"1.1"``."""
    return f"{_C.libbpf_major_version()}.{_C.libbpf_minor_version()}"


@functools.cache
def num_possible_cpus() -> int:
    """CPUs a per-CPU map holds a value for (possible, not online)."""
    return _check(int(_C.libbpf_num_possible_cpus()), "libbpf_num_possible_cpus")


# ---------------------------------------------------------------------------------------------
# libbpf's print callback -> logging (+ capture during open/load)
# ---------------------------------------------------------------------------------------------

_LOG_LEVELS: Final = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
# Size of the va_list object the callback receives a pointer to; copying it is va_copy() on these
# ABIs, which lets a message be measured before it is formatted. Elsewhere: truncate at 64 KiB.
_VA_LIST_SIZE: Final = {"x86_64": 24, "aarch64": 32}.get(platform.machine())
_FALLBACK_MSG_SIZE: Final = 64 * 1024


class _Capture:
    """The lines each capturing thread collects (by thread id): objects may load in parallel
    threads (the verifier runs without the GIL), each load keeping its own messages."""

    lock = threading.Lock()
    lines: dict[int, list[tuple[int, str]]] = {}


def _vformat(fmt: bytes, ap: int) -> str:
    if _VA_LIST_SIZE is not None:
        words = _VA_LIST_SIZE // 8
        ap_copy = (ctypes.c_uint64 * words).from_buffer_copy(ctypes.string_at(ap, _VA_LIST_SIZE))
        size = int(_C.vsnprintf(None, 0, fmt, ctypes.addressof(ap_copy))) + 1
    else:
        size = _FALLBACK_MSG_SIZE
    buf = ctypes.create_string_buffer(max(size, 1))
    _C.vsnprintf(buf, len(buf), fmt, ap)
    return buf.value.decode(errors="replace")


def _on_libbpf_print(level: int, fmt: bytes | None, ap: int | None) -> int:
    # Called from C: must never raise (an escaping exception would only be printed).
    try:
        lines = _Capture.lines.get(threading.get_ident()) if level <= 1 else None
        capturing = lines is not None
        # captured messages are the caller's to report (exception or _relog): debug only here
        pylevel = logging.DEBUG if capturing else _LOG_LEVELS.get(level, logging.DEBUG)
        if fmt is None or ap is None or not (capturing or log.isEnabledFor(pylevel)):
            return 0
        text = _vformat(fmt, ap)
        if lines is not None:
            lines.append((level, text))
        log.log(pylevel, "%s", text.rstrip())
    except BaseException:
        pass
    return 0


_PRINT_CALLBACK: Final = _PRINT_FN(_on_libbpf_print)
_C.libbpf_set_print(_PRINT_CALLBACK)


@contextmanager
def _capture_libbpf_log() -> Iterator[list[tuple[int, str]]]:
    """Collects the calling thread's libbpf WARN/INFO messages for the duration of the block
    instead of logging them: the caller attaches them to its exception or :func:`_relog`s them.
    Other threads capture their own at the same time. Not reentrant within a thread."""
    me = threading.get_ident()
    lines: list[tuple[int, str]] = []
    with _Capture.lock:
        if me in _Capture.lines:
            raise RuntimeError("_capture_libbpf_log is not reentrant")
        _Capture.lines[me] = lines
    try:
        yield lines
    finally:
        with _Capture.lock:
            del _Capture.lines[me]


def _relog(lines: Sequence[tuple[int, str]]) -> None:
    for level, text in lines:
        log.log(_LOG_LEVELS.get(level, logging.DEBUG), "%s", text.rstrip())


def _first_warning(lines: Sequence[tuple[int, str]]) -> str:
    text = next((text.strip() for level, text in lines if level == 0), "")
    return text.removeprefix("libbpf: ")


_LOG_BEGIN: Final = "-- BEGIN PROG LOAD LOG --"
_LOG_END: Final = "-- END PROG LOAD LOG --"


def _load_error(ret: int, lines: Sequence[tuple[int, str]]) -> BPFError:
    text = "".join(t for _, t in lines)
    if _LOG_BEGIN in text or "BPF program load failed" in text:
        start = text.find(_LOG_BEGIN)
        verifier_log = ""
        if start >= 0:
            start += len(_LOG_BEGIN)
            end = text.find(_LOG_END, start)
            verifier_log = text[start : end if end >= 0 else None].strip("\n")
        err = abs(ret)
        return BPFVerifierError(
            err,
            f"{_errno_text(err)}: {_first_warning(lines)}",
            op="bpf_object__load",
            log=text,
            verifier_log=verifier_log,
        )
    return bpf_error(ret, "bpf_object__load", _first_warning(lines), log=text)


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------


class _BpfMapInfo(ctypes.Structure):
    """``struct bpf_map_info`` (linux/bpf.h); the kernel fills up to the size we pass."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map. ``name`` is the kernel's (truncated to 15 chars)."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def _map_info(fd: int) -> MapInfo:
    # bpf_obj_get_info_by_fd accepts any BPF fd and would fill prog info into this struct
    kind = os.readlink(f"/proc/self/fd/{fd}")
    if kind != "anon_inode:bpf-map":
        raise bpf_error(_errno.EINVAL, "bpf_obj_get_info_by_fd", f"fd {fd} is {kind}, not a map")
    raw = _BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(raw))
    _check(
        int(_C.bpf_obj_get_info_by_fd(fd, ctypes.byref(raw), ctypes.byref(size))),
        "bpf_obj_get_info_by_fd",
    )
    return MapInfo(
        type=int(raw.type),
        id=int(raw.id),
        key_size=int(raw.key_size),
        value_size=int(raw.value_size),
        max_entries=int(raw.max_entries),
        flags=int(raw.map_flags),
        name=bytes(raw.name).split(b"\0", 1)[0].decode(errors="replace"),
    )


_BATCH_UNSUPPORTED: Final = frozenset({ENOTSUPP, _errno.EOPNOTSUPP})


class _Owned:
    """A kernel/libbpf resource released by ``close()``: context manager, and closed on garbage
    collection as a last resort (late in interpreter shutdown that may fail; exit closes it)."""

    def _owns_resource(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with suppress(Exception):
            if self._owns_resource():
                self.close()


class Map(_Owned):
    """An open BPF map. Owns its fd (closed by :meth:`close`, the context manager or GC).

    Keys and values are raw bytes of exactly ``key_size`` / ``value_size``; sizes are checked
    here because the kernel would otherwise read past a short Python buffer. Values of per-CPU
    maps are ``round_up(value_size, 8) * num_possible_cpus()`` bytes (see
    :meth:`lookup_percpu` / :meth:`update_percpu` for the split form).
    """

    def __init__(self, fd: int) -> None:
        """Takes ownership of ``fd`` (closed here too if it is not a map)."""
        self._fd = fd
        try:
            self._info = _map_info(fd)
        except BaseException:
            os.close(fd)
            self._fd = -1
            raise
        self._percpu = self._info.type in _PERCPU_MAP_TYPES
        self._ncpus = num_possible_cpus() if self._percpu else 1
        self._stride = (self._info.value_size + 7) & ~7 if self._percpu else self._info.value_size
        self._value_buf_size = self._stride * self._ncpus
        self._lookup_batch_ok = True
        self._delete_batch_ok = True

    @classmethod
    def from_pin(cls, path: os.PathLike[str] | str) -> Map:
        """Opens the map pinned at ``path`` on bpffs."""
        fd = int(_C.bpf_obj_get(os.fsencode(path)))
        return cls(_check(fd, "bpf_obj_get", str(path)))

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Opens the map with kernel id ``map_id`` (what a map-of-maps lookup returns)."""
        fd = int(_C.bpf_map_get_fd_by_id(map_id))
        return cls(_check(fd, "bpf_map_get_fd_by_id", str(map_id)))

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError("operation on a closed Map")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _owns_resource(self) -> bool:
        return getattr(self, "_fd", -1) >= 0

    def __repr__(self) -> str:
        return f"<Map {self._info.name!r} id={self._info.id} fd={self._fd}>"

    def pin(self, path: os.PathLike[str] | str) -> None:
        """Pins the map at ``path`` (which must not exist) on bpffs."""
        obj_pin(self.fd, path)

    # -- metadata ----------------------------------------------------------------------------

    @property
    def info(self) -> MapInfo:
        """Read once when the Map is created (none of it changes over a map's life)."""
        return self._info

    @property
    def key_size(self) -> int:
        return self._info.key_size

    @property
    def value_size(self) -> int:
        return self._info.value_size

    @property
    def is_percpu(self) -> bool:
        return self._percpu

    @property
    def value_buffer_size(self) -> int:
        """Bytes of a value as lookup()/update() exchange it (all CPUs for per-CPU maps)."""
        return self._value_buf_size

    def _key(self, key: bytes, op: str) -> bytes:
        if len(key) != self._info.key_size:
            raise bpf_error(
                _errno.EINVAL, op, f"key is {len(key)} bytes, map wants {self._info.key_size}"
            )
        return key

    def _value(self, value: bytes, op: str) -> bytes:
        if len(value) != self._value_buf_size:
            raise bpf_error(
                _errno.EINVAL, op, f"value is {len(value)} bytes, map wants {self._value_buf_size}"
            )
        return value

    # -- single elements ---------------------------------------------------------------------

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        k = self._key(key, "bpf_map_lookup_elem")
        value = ctypes.create_string_buffer(self._value_buf_size)
        ret = int(_C.bpf_map_lookup_elem(self.fd, k, value))
        if ret == -_errno.ENOENT:
            return None
        _check(ret, "bpf_map_lookup_elem")
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Stores ``value`` under ``key``; flags BPF_ANY / BPF_NOEXIST / BPF_EXIST."""
        k = self._key(key, "bpf_map_update_elem")
        v = self._value(value, "bpf_map_update_elem")
        _check(int(_C.bpf_map_update_elem(self.fd, k, v, flags)), "bpf_map_update_elem")

    def update_socket(self, key: bytes, sock_fd: int, flags: int = BPF_ANY) -> None:
        """Stores the socket of ``sock_fd`` under ``key`` in a SOCKMAP/SOCKHASH (the map holds
        the socket from then on, until it closes: the fd may be closed)."""
        value = sock_fd.to_bytes(self._value_buf_size, sys.byteorder)
        self.update(key, value, flags)

    def delete(self, key: bytes) -> bool:
        """Removes ``key``; False when it was absent."""
        k = self._key(key, "bpf_map_delete_elem")
        ret = int(_C.bpf_map_delete_elem(self.fd, k))
        if ret == -_errno.ENOENT:
            return False
        _check(ret, "bpf_map_delete_elem")
        return True

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        """The per-CPU values (each ``value_size`` bytes, index = CPU) under ``key``, or None."""
        if not self._percpu:
            raise TypeError(f"{self!r} is not a per-CPU map")
        raw = self.lookup(key)
        if raw is None:
            return None
        size, stride = self._info.value_size, self._stride
        return [raw[cpu * stride : cpu * stride + size] for cpu in range(self._ncpus)]

    def update_percpu(self, key: bytes, values: Sequence[bytes], flags: int = BPF_ANY) -> None:
        """Stores one ``value_size`` value per possible CPU under ``key``."""
        if not self._percpu:
            raise TypeError(f"{self!r} is not a per-CPU map")
        if len(values) != self._ncpus or any(len(v) != self._info.value_size for v in values):
            raise bpf_error(
                _errno.EINVAL,
                "bpf_map_update_elem",
                f"need {self._ncpus} values of {self._info.value_size} bytes",
            )
        self.update(key, b"".join(v.ljust(self._stride, b"\0") for v in values), flags)

    # -- iteration ---------------------------------------------------------------------------

    def keys(self) -> Iterator[bytes]:
        """Keys via bpf_map_get_next_key. Concurrent deletes can restart a hash walk (kernel
        semantics), so a key may be seen twice while the map is being changed."""
        current: bytes | None = None
        nxt = ctypes.create_string_buffer(self._info.key_size)
        while True:
            ret = int(_C.bpf_map_get_next_key(self.fd, current, nxt))
            if ret == -_errno.ENOENT:
                return
            _check(ret, "bpf_map_get_next_key")
            current = nxt.raw
            yield current

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs; one syscall per chunk where the map type supports batching."""
        return iter(self.lookup_batch())

    def lookup_batch(self, chunk: int = 1024) -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs via bpf_map_lookup_batch, or per key where the map type has no
        batch support (LPM trie, ...): the fallback is transparent and remembered."""
        if self._lookup_batch_ok:
            try:
                return self._lookup_batch(chunk)
            except BPFError as e:
                if e.errno not in _BATCH_UNSUPPORTED:
                    raise
                self._lookup_batch_ok = False
        out: list[tuple[bytes, bytes]] = []
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                out.append((key, value))
        return out

    def _lookup_batch(self, chunk: int) -> list[tuple[bytes, bytes]]:
        ks, vs = self._info.key_size, self._value_buf_size
        # The resume token is a bucket index (hash) or a key (array): room for either.
        token_size = max(ks, 8)
        in_token = ctypes.create_string_buffer(token_size)
        out_token = ctypes.create_string_buffer(token_size)
        out: list[tuple[bytes, bytes]] = []
        first = True
        n = max(chunk, 1)
        while True:
            keys = ctypes.create_string_buffer(ks * n)
            values = ctypes.create_string_buffer(vs * n)
            count = ctypes.c_uint32(n)
            ret = int(
                _C.bpf_map_lookup_batch(
                    self.fd,
                    None if first else in_token,
                    out_token,
                    keys,
                    values,
                    ctypes.byref(count),
                    None,
                )
            )
            if ret == -_errno.ENOSPC and count.value == 0:
                n *= 2  # a hash bucket holds more entries than one chunk: retry bigger
                continue
            if ret < 0 and ret != -_errno.ENOENT:
                _check(ret, "bpf_map_lookup_batch")
            kraw, vraw = keys.raw, values.raw
            out.extend(
                (kraw[i * ks : (i + 1) * ks], vraw[i * vs : (i + 1) * vs])
                for i in range(count.value)
            )
            if ret == -_errno.ENOENT:
                return out
            ctypes.memmove(in_token, out_token, token_size)
            first = False

    def delete_batch(self, keys: Iterable[bytes]) -> int:
        """Deletes ``keys``; returns how many existed. Absent keys are skipped, not errors."""
        batch = [self._key(k, "bpf_map_delete_batch") for k in keys]
        if not batch:
            return 0
        if self._delete_batch_ok:
            try:
                return self._delete_batch(batch)
            except _BatchUnsupportedError:
                self._delete_batch_ok = False
        return sum(1 for k in batch if self.delete(k))

    def update_batch(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Writes every (key, value) (BPF_ANY) in one syscall where the map type batches (a
        Maglev table: 16381 entries), else one by one."""
        keys = b"".join(self._key(k, "bpf_map_update_batch") for k, _ in items)
        values = b"".join(self._value(v, "bpf_map_update_batch") for _, v in items)
        if not items:
            return
        count = ctypes.c_uint32(len(items))
        ret = int(_C.bpf_map_update_batch(self.fd, keys, values, ctypes.byref(count), None))
        if ret == 0 and count.value == len(items):
            return
        if ret < 0 and -ret not in _BATCH_UNSUPPORTED:
            _check(ret, "bpf_map_update_batch")
        for k, v in items[count.value if ret == 0 else 0 :]:
            self.update(k, v)

    def _delete_batch(self, batch: list[bytes]) -> int:
        deleted = 0
        i = 0
        while i < len(batch):
            rest = batch[i:]
            count = ctypes.c_uint32(len(rest))
            ret = int(_C.bpf_map_delete_batch(self.fd, b"".join(rest), ctypes.byref(count), None))
            if ret == 0:
                return deleted + len(rest)
            if -ret in _BATCH_UNSUPPORTED and i == 0:
                raise _BatchUnsupportedError
            if ret != -_errno.ENOENT:
                _check(ret, "bpf_map_delete_batch")
            # count = keys deleted before the absent one; skip it and go on
            deleted += count.value
            i += count.value + 1
        return deleted

    def count(self) -> int:
        """Number of entries (array maps: always max_entries)."""
        if self._lookup_batch_ok:
            try:
                return len(self._lookup_batch(1024))
            except BPFError as e:
                if e.errno not in _BATCH_UNSUPPORTED:
                    raise
                self._lookup_batch_ok = False
        return sum(1 for _ in self.keys())


class _BatchUnsupportedError(Exception):
    """The map type has no batch operation (raised before anything was deleted)."""


class _MapCreateOpts(ctypes.Structure):
    """``struct bpf_map_create_opts`` of libbpf 1.1 (bpf.h); only ``sz`` and ``map_flags`` are
    set, the rest stays zero."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
        ("numa_node", ctypes.c_uint32),
        ("map_ifindex", ctypes.c_uint32),
    ]


def map_create(
    map_type: int, name: str, key_size: int, value_size: int, max_entries: int, *, flags: int = 0
) -> Map:
    """Creates a standalone map (e.g. an inner map for a map-of-maps); the Map owns its fd."""
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=flags)
    fd = int(
        _C.bpf_map_create(
            map_type, name.encode()[:15], key_size, value_size, max_entries, ctypes.byref(opts)
        )
    )
    return Map(_check(fd, "bpf_map_create", name))


def obj_pin(fd: int, path: os.PathLike[str] | str) -> None:
    """Pins a map or program fd at ``path`` on bpffs."""
    _check(int(_C.bpf_obj_pin(fd, os.fsencode(path))), "bpf_obj_pin", str(path))


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """A BPF link attaching ``prog_fd`` to ``target_fd`` (a cgroup directory's fd for the
    ``BPF_CGROUP_*`` types, a network namespace's for ``BPF_SK_LOOKUP``); returns the link's
    fd, owned by the caller (pin it with :func:`obj_pin` to keep the attachment once the fd is
    closed)."""
    fd = int(_C.bpf_link_create(prog_fd, target_fd, attach_type, None))
    return _check(fd, "bpf_link_create", f"attach type {attach_type}")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Replace the program of the link ``link_fd`` atomically (no moment without one)."""
    _check(int(_C.bpf_link_update(link_fd, prog_fd, None)), "bpf_link_update")


def _link_info(link_fd: int) -> tuple[int, bytes]:
    """A link's type and the union of ``struct bpf_link_info`` (type, id, prog_id: u32 each,
    then the union at offset 16)."""
    kind = os.readlink(f"/proc/self/fd/{link_fd}")
    if kind != "anon_inode:bpf-link":
        raise bpf_error(_errno.EINVAL, "bpf_obj_get_info_by_fd", f"fd {link_fd} is {kind}")
    raw = (ctypes.c_uint8 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(raw))
    _check(
        int(_C.bpf_obj_get_info_by_fd(link_fd, ctypes.byref(raw), ctypes.byref(size))),
        "bpf_obj_get_info_by_fd",
    )
    data = bytes(raw)
    return int.from_bytes(data[0:4], sys.byteorder), data[16:]


def link_cgroup_id(link_fd: int) -> int | None:
    """The id of the cgroup a cgroup link is attached to (a cgroup v2 directory's inode number);
    0 once that cgroup was removed; None for a link of another kind."""
    kind, union = _link_info(link_fd)  # cgroup: {u64 cgroup_id; u32 attach_type}
    return int.from_bytes(union[0:8], sys.byteorder) if kind == _BPF_LINK_TYPE_CGROUP else None


def link_netns_ino(link_fd: int) -> int | None:
    """The inode number of the network namespace a netns link (``BPF_SK_LOOKUP``) is attached
    to; 0 once that namespace is gone; None for a link of another kind."""
    kind, union = _link_info(link_fd)  # netns: {u32 netns_ino; u32 attach_type}
    return int.from_bytes(union[0:4], sys.byteorder) if kind == _BPF_LINK_TYPE_NETNS else None


def prog_from_pin(path: os.PathLike[str] | str) -> int:
    """A new fd (owned by the caller) for the program pinned at ``path``."""
    return _check(int(_C.bpf_obj_get(os.fsencode(path))), "bpf_obj_get", str(path))


class _BpfProgInfoHead(ctypes.Structure):
    """``struct bpf_prog_info`` (linux/bpf.h) up to its name; the kernel fills up to the size
    we pass, and copies up to ``nr_map_ids`` ids to ``map_ids``, setting ``nr_map_ids`` to how
    many the program uses."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _TestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` (bpf/bpf.h, libbpf 1.0+)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_SKB_CTX_SIZE = 192
"""``struct __sk_buff``'s size, the context a tc program's test run is given."""
_SKB_INGRESS_IFINDEX, _SKB_IFINDEX = 36, 40
"""Offsets in ``struct __sk_buff`` of the two fields a test run may set besides mark/priority."""


@dataclass(frozen=True)
class TestRun:
    """One BPF_PROG_TEST_RUN: the program's return value, the packet as it left the program,
    and the kernel's time per repetition (ns, its own clock around the program runs)."""

    __test__ = False  # not a pytest class

    retval: int
    data: bytes
    duration_ns: int


def prog_test_run_skb(
    prog_fd: int, frame: bytes, *, ifindex: int = 0, repeat: int = 1, headroom: int = 256
) -> TestRun:
    """Runs tc program ``prog_fd`` on Ethernet frame ``frame`` as if it arrived on ``ifindex``
    (its ``skb->ifindex`` and ``ingress_ifindex``; a device of the calling thread's netns; 0:
    the kernel's default, loopback), ``repeat`` times on the same skb (a program that rewrites
    the packet sees its own output the next time). ``headroom``: room for the packet to grow
    (encapsulation)."""
    ctx = ctypes.create_string_buffer(_SKB_CTX_SIZE)
    if ifindex:
        ctypes.c_uint32.from_buffer(ctx, _SKB_INGRESS_IFINDEX).value = ifindex
        ctypes.c_uint32.from_buffer(ctx, _SKB_IFINDEX).value = ifindex
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + headroom)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        data_size_in=len(frame),
        data_size_out=len(data_out),
        ctx_in=ctypes.addressof(ctx),
        ctx_size_in=_SKB_CTX_SIZE,
        repeat=repeat,
    )
    _check(int(_C.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))), "bpf_prog_test_run")
    return TestRun(int(opts.retval), data_out.raw[: opts.data_size_out], int(opts.duration))


def prog_map_ids(prog_fd: int) -> list[int]:
    """The ids of the maps program ``prog_fd`` uses (``bpf_prog_info.map_ids``)."""
    kind = os.readlink(f"/proc/self/fd/{prog_fd}")
    if kind != "anon_inode:bpf-prog":
        raise bpf_error(_errno.EINVAL, "bpf_obj_get_info_by_fd", f"fd {prog_fd} is {kind}")
    room = 64
    while True:
        ids = (ctypes.c_uint32 * room)()
        raw = _BpfProgInfoHead(nr_map_ids=room, map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(raw))
        _check(
            int(_C.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(raw), ctypes.byref(size))),
            "bpf_obj_get_info_by_fd",
        )
        if raw.nr_map_ids <= room:
            return [int(i) for i in ids[: raw.nr_map_ids]]
        room = int(raw.nr_map_ids)


def pin_link(
    pin: Path,
    prog_fd: int,
    target_fd: int,
    attach_type: int,
    *,
    attached_to: Callable[[int], int | None],
    want: int,
) -> None:
    """Attach ``prog_fd`` to ``target_fd`` through the link pinned at ``pin``: a pinned link on
    the same target (``attached_to(link fd) == want``) gets the program replaced atomically;
    one on another (or a gone) target is unpinned, its attachment going with it, and a new
    link is created and pinned."""
    if pin.exists():
        fd = prog_from_pin(pin)
        try:
            if attached_to(fd) == want:
                link_update(fd, prog_fd)
                return
        finally:
            os.close(fd)
        pin.unlink()
    fd = link_create(prog_fd, target_fd, attach_type)
    try:
        obj_pin(fd, pin)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------

VERIFIER_INSN_LIMIT: Final = 1_000_000
"""The kernel's limit on the instructions the verifier processes for one program
(BPF_COMPLEXITY_LIMIT_INSNS): a program past it does not load."""
_BPF_LOG_STATS: Final = 4
_STATS_LOG_BYTES: Final = 4096  # the statistics are two lines per program and subprogram
_PROCESSED = re.compile(r"processed (\d+) insns")


class BPFObject(_Owned):
    """An ELF object opened (and then loaded) by libbpf: its maps and programs.

    Program fds handed out are borrowed and die with :meth:`close`; maps are handed out as
    :class:`Map` owning a dup() of the fd, so they outlive the object.
    """

    def __init__(self, handle: int, path: Path) -> None:
        """Use :meth:`open`; takes ownership of the ``struct bpf_object *``."""
        self._handle: int | None = handle
        self._loaded = False
        self._programs_loaded = False
        self.verified_insns: dict[str, int] = {}
        """program → instructions the verifier processed (``load(stats=True)``)"""
        self.path = path
        self._maps: dict[str, int] = {}
        self._programs: dict[str, int] = {}
        ptr: int | None = None
        while ptr := _C.bpf_object__next_map(handle, ptr):
            self._maps[_name(_C.bpf_map__name(ptr))] = ptr
        ptr = None
        while ptr := _C.bpf_object__next_program(handle, ptr):
            self._programs[_name(_C.bpf_program__name(ptr))] = ptr

    @classmethod
    def open(
        cls,
        path: os.PathLike[str] | str,
        *,
        pin_dir: os.PathLike[str] | str | None = None,
        max_entries: Mapping[str, int] | None = None,
    ) -> BPFObject:
        """Opens ``path``. With ``pin_dir`` every (non-internal) map gets the pin path
        ``pin_dir/<name>``: load() then reuses a compatible existing pin or creates and pins the
        map. ``max_entries`` overrides sizes by map name (before load; a reused pin must match)."""
        path = Path(path)
        with _capture_libbpf_log() as lines:
            handle = _C.bpf_object__open_file(os.fsencode(path), None)
        _check_ptr(
            handle,
            "bpf_object__open_file",
            _first_warning(lines) or str(path),
            log="".join(t for _, t in lines),
        )
        _relog(lines)
        obj = cls(handle, path)
        try:
            obj._configure(pin_dir, max_entries or {})
        except BaseException:
            obj.close()
            raise
        return obj

    def _configure(
        self, pin_dir: os.PathLike[str] | str | None, max_entries: Mapping[str, int]
    ) -> None:
        unknown = set(max_entries) - set(self._maps)
        if unknown:
            raise KeyError(f"{self.path}: no map named {', '.join(sorted(unknown))}")
        for name, entries in max_entries.items():
            _check(
                int(_C.bpf_map__set_max_entries(self._maps[name], entries)),
                "bpf_map__set_max_entries",
                name,
            )
        if pin_dir is None:
            return
        os.makedirs(pin_dir, exist_ok=True)
        for name, ptr in self._maps.items():
            if _C.bpf_map__is_internal(ptr):
                continue  # .rodata/.bss belong to this object, never shared through a pin
            pin = os.path.join(os.fspath(pin_dir), name)
            _check(int(_C.bpf_map__set_pin_path(ptr, os.fsencode(pin))), "bpf_map__set_pin_path")

    @property
    def _obj(self) -> int:
        if self._handle is None:
            raise ValueError("operation on a closed BPFObject")
        return self._handle

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _require_loaded(self, op: str, name: str) -> None:
        self._obj  # noqa: B018 -- raises when closed
        if not self._loaded:
            # libbpf itself answers -1 (EPERM) or ENOENT here, which would mislead
            raise bpf_error(_errno.EINVAL, op, f"{name}: {self.path} is not loaded yet")

    def load(self, *, programs: bool = True, stats: bool = False) -> None:
        """Creates/reuses the maps and loads the programs; a verifier rejection raises
        :class:`BPFVerifierError` carrying the verifier log. ``programs=False`` creates (or
        reuses) the maps only: what a holder of an object's maps needs, without the verifier's
        seconds for programs it never runs (their fds then stay unavailable). ``stats=True``
        asks the verifier for its statistics (BPF_LOG_STATS), read into :attr:`verified_insns`:
        how close each program is to the kernel's limit on processed instructions."""
        if not programs:
            for name, prog in self._programs.items():
                _check(
                    int(_C.bpf_program__set_autoload(prog, False)),
                    "bpf_program__set_autoload",
                    name,
                )
        logs: dict[str, ctypes.Array[ctypes.c_char]] = {}
        if stats and programs:
            for name, prog in self._programs.items():
                logs[name] = ctypes.create_string_buffer(_STATS_LOG_BYTES)
                _check(
                    int(_C.bpf_program__set_log_buf(prog, logs[name], _STATS_LOG_BYTES)),
                    "bpf_program__set_log_buf",
                    name,
                )
                _check(
                    int(_C.bpf_program__set_log_level(prog, _BPF_LOG_STATS)),
                    "bpf_program__set_log_level",
                    name,
                )
        with _capture_libbpf_log() as lines:
            ret = int(_C.bpf_object__load(self._obj))
        if ret < 0:
            raise _load_error(ret, lines)
        self._loaded = True
        self._programs_loaded = programs
        _relog(lines)
        for name, buf in logs.items():
            found = _PROCESSED.search(buf.value.decode(errors="replace"))
            if found:
                self.verified_insns[name] = int(found.group(1))

    def map_names(self) -> list[str]:
        return list(self._maps)

    def program_names(self) -> list[str]:
        return list(self._programs)

    def map(self, name: str) -> Map:
        """The loaded map ``name`` as a :class:`Map` owning a dup() of its fd."""
        ptr = self._maps[name]
        self._require_loaded("bpf_map__fd", name)
        fd = _check(int(_C.bpf_map__fd(ptr)), "bpf_map__fd", name)
        return Map(os.dup(fd))

    def _require_programs(self, op: str, name: str) -> None:
        self._require_loaded(op, name)
        if not self._programs_loaded:
            raise bpf_error(_errno.EINVAL, op, f"{name}: {self.path} was loaded without programs")

    def program_fd(self, name: str) -> int:
        """The loaded program's fd, borrowed: valid until :meth:`close`."""
        ptr = self._programs[name]
        self._require_programs("bpf_program__fd", name)
        return _check(int(_C.bpf_program__fd(ptr)), "bpf_program__fd", name)

    def pin_program(self, name: str, path: os.PathLike[str] | str) -> None:
        """Pins program ``name`` at ``path``, replacing whatever was pinned there."""
        prog = self._programs[name]
        self._require_programs("bpf_program__pin", name)
        with suppress(FileNotFoundError):
            os.unlink(path)
        _check(int(_C.bpf_program__pin(prog, os.fsencode(path))), "bpf_program__pin", str(path))

    def close(self) -> None:
        """Frees the object: borrowed program fds die; pins and Map dups stay valid."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _C.bpf_object__close(handle)

    def _owns_resource(self) -> bool:
        return getattr(self, "_handle", None) is not None


def _name(raw: bytes | None) -> str:
    return (raw or b"").decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# tc (clsact) attachment, in the calling thread's network namespace
# ---------------------------------------------------------------------------------------------

TcDirection = Literal["ingress", "egress"]
_TC_POINTS: Final[Mapping[str, int]] = {"ingress": _BPF_TC_INGRESS, "egress": _BPF_TC_EGRESS}


class _TcHook(ctypes.Structure):
    """``struct bpf_tc_hook``; the trailing ``size_t :0`` is ctypes' natural tail padding."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),  # enum bpf_tc_attach_point
        ("parent", ctypes.c_uint32),
    ]


class _TcOpts(ctypes.Structure):
    """``struct bpf_tc_opts``; same tail padding as the hook."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


def _tc_hook(ifindex: int, attach_point: int) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=attach_point)


def _tc_opts(handle: int, priority: int) -> _TcOpts:
    return _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)


def tc_attach(
    ifindex: int,
    prog_fd: int,
    direction: TcDirection,
    *,
    handle: int = 1,
    priority: int = 1,
    replace: bool = True,
) -> int:
    """Attaches ``prog_fd`` as a direct-action filter on the clsact ``direction`` hook of
    ``ifindex`` in the calling thread's netns (creating clsact if needed); returns the attached
    program's id. Without
    ``replace`` an existing filter at (handle, priority) raises :class:`BPFExistsError`."""
    _tc_check_args(handle, priority)
    hook = _tc_hook(ifindex, _TC_POINTS[direction])
    with _capture_libbpf_log() as lines:
        ret = int(_C.bpf_tc_hook_create(ctypes.byref(hook)))
    if ret < 0 and ret != -_errno.EEXIST:
        raise bpf_error(ret, "bpf_tc_hook_create", _tc_detail(ifindex, direction, lines))
    opts = _tc_opts(handle, priority)
    opts.prog_fd = prog_fd
    opts.flags = _BPF_TC_F_REPLACE if replace else 0
    with _capture_libbpf_log() as lines:
        ret = int(_C.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)))
    if ret < 0:
        raise bpf_error(ret, "bpf_tc_attach", _tc_detail(ifindex, direction, lines))
    return int(opts.prog_id)


def _tc_detail(ifindex: int, direction: str, lines: Sequence[tuple[int, str]]) -> str:
    # libbpf relays the kernel's netlink extack as "Kernel error message: ..."
    why = _first_warning(lines)
    return f"ifindex {ifindex} {direction}" + (f" ({why})" if why else "")


def _tc_check_args(handle: int, priority: int) -> None:
    # libbpf rejects these with the same EINVAL the kernel uses for "no such hook": check first
    if not 0 < handle <= 0xFFFFFFFF or not 0 < priority <= 0xFFFF:
        raise bpf_error(_errno.EINVAL, "bpf_tc_opts", f"handle={handle} priority={priority}")


def tc_detach(ifindex: int, direction: TcDirection, *, handle: int = 1, priority: int = 1) -> bool:
    """Removes the filter at (handle, priority); False when there was none (or no clsact)."""
    _tc_check_args(handle, priority)
    hook = _tc_hook(ifindex, _TC_POINTS[direction])
    opts = _tc_opts(handle, priority)
    with _capture_libbpf_log():
        ret = int(_C.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)))
    if ret in (-_errno.ENOENT, -_errno.EINVAL):
        return False
    _check(ret, "bpf_tc_detach", f"ifindex {ifindex} {direction}")
    return True


def tc_query(
    ifindex: int, direction: TcDirection, *, handle: int = 1, priority: int = 1
) -> int | None:
    """The id of the program attached at (handle, priority), or None (also when no clsact)."""
    _tc_check_args(handle, priority)
    hook = _tc_hook(ifindex, _TC_POINTS[direction])
    opts = _tc_opts(handle, priority)
    with _capture_libbpf_log():
        ret = int(_C.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts)))
    # The kernel answers EINVAL, not ENOENT, when the clsact qdisc or its chain is missing;
    # a missing device is ENODEV and still raises.
    if ret in (-_errno.ENOENT, -_errno.EINVAL):
        return None
    _check(ret, "bpf_tc_query", f"ifindex {ifindex} {direction}")
    return int(opts.prog_id)


def tc_hook_destroy(ifindex: int) -> bool:
    """Removes the clsact qdisc (and every filter on both hooks); False when there was none."""
    hook = _tc_hook(ifindex, _BPF_TC_INGRESS | _BPF_TC_EGRESS)
    with _capture_libbpf_log() as lines:
        ret = int(_C.bpf_tc_hook_destroy(ctypes.byref(hook)))
    # ENOENT the first time there is no clsact, EINVAL ("Invalid handle") after a destroy
    if ret in (-_errno.ENOENT, -_errno.EINVAL):
        return False
    if ret < 0:
        raise bpf_error(ret, "bpf_tc_hook_destroy", _tc_detail(ifindex, "clsact", lines))
    return True


# ---------------------------------------------------------------------------------------------
# tcx: a device's ingress/egress BPF hook without a qdisc (Linux 6.6), in the calling thread's
# network namespace
# ---------------------------------------------------------------------------------------------
# The datapath's programs run here, as upstream Cilium's do on kernels that have it: the kernel
# runs them straight from the device's receive and transmit paths, without the clsact qdisc's
# classifier chain around each one (tc_run, tcf_classify, cls_bpf_classify: measured at a few
# microseconds per connection of the bench's connection rate, with three program runs per
# packet). A program's verdict other than TCX_NEXT (-1) also ends the hook: a clsact filter on
# the same device no longer runs after it. Attachments are made without a link (BPF_PROG_ATTACH),
# so they stay when the agent exits, as the clsact filters did, until detached or the device
# goes. A program is identified on a hook by its name: one per name, replaced in place.

_TCX_POINTS: Final[Mapping[str, int]] = {"ingress": _BPF_TCX_INGRESS, "egress": _BPF_TCX_EGRESS}


class _ProgAttachOpts(ctypes.Structure):
    """``struct bpf_prog_attach_opts`` of libbpf 1.1."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("replace_prog_fd", ctypes.c_int),
    ]


def _prog_info(prog_fd: int) -> tuple[int, str]:
    """A program's (id, name) (``bpf_prog_info``)."""
    raw = _BpfProgInfoHead()
    size = ctypes.c_uint32(ctypes.sizeof(raw))
    _check(
        int(_C.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(raw), ctypes.byref(size))),
        "bpf_obj_get_info_by_fd",
    )
    return int(raw.id), _name(raw.name)


def tcx_query(ifindex: int, direction: TcDirection) -> list[int]:
    """The ids of the programs on the ``direction`` tcx hook of ``ifindex``, in the order they
    run (empty when there are none); a missing device raises."""
    room = 16
    while True:
        ids = (ctypes.c_uint32 * room)()
        count = ctypes.c_uint32(room)
        flags = ctypes.c_uint32(0)
        ret = int(
            _C.bpf_prog_query(
                ifindex, _TCX_POINTS[direction], 0, ctypes.byref(flags), ids, ctypes.byref(count)
            )
        )
        if ret == -_errno.ENOSPC:
            room *= 4
            continue
        _check(ret, "bpf_prog_query", f"ifindex {ifindex} tcx {direction}")
        return [int(i) for i in ids[: min(count.value, room)]]


@contextmanager
def _tcx_entries(ifindex: int, direction: TcDirection) -> Iterator[list[tuple[int, str, int]]]:
    """(id, name, fd) of each program on the hook, in the order they run, the fds open for the
    block (a program detached and freed since the query is left out)."""
    entries: list[tuple[int, str, int]] = []
    try:
        for prog_id in tcx_query(ifindex, direction):
            fd = int(_C.bpf_prog_get_fd_by_id(prog_id))
            if fd < 0:
                continue
            entries.append((prog_id, "", fd))  # closed below, also if reading its name fails
            entries[-1] = (prog_id, _prog_info(fd)[1], fd)
        yield entries
    finally:
        for _, _, fd in entries:
            os.close(fd)


def tcx_programs(ifindex: int, direction: TcDirection) -> list[tuple[int, str]]:
    """(id, name) of each program on the hook, in the order they run (``bpftool`` before 7.3
    does not list tcx hooks)."""
    with _tcx_entries(ifindex, direction) as entries:
        return [(prog_id, name) for prog_id, name, _ in entries]


def tcx_attach(ifindex: int, prog_fd: int, direction: TcDirection) -> int:
    """Attaches ``prog_fd`` to the ``direction`` tcx hook of ``ifindex``, replacing in place (one
    atomic swap: no packet meets no program) the program of the same name there, or after the
    hook's other programs; returns the program's id."""
    prog_id, name = _prog_info(prog_fd)
    opts = _ProgAttachOpts(sz=ctypes.sizeof(_ProgAttachOpts))
    with _tcx_entries(ifindex, direction) as entries:
        for old_id, old_name, old_fd in entries:
            if old_name != name:
                continue
            if old_id == prog_id:
                return prog_id
            opts.flags = _BPF_F_REPLACE
            opts.replace_prog_fd = old_fd
            break
        ret = int(
            _C.bpf_prog_attach_opts(prog_fd, ifindex, _TCX_POINTS[direction], ctypes.byref(opts))
        )
    _check(ret, "bpf_prog_attach_opts", f"ifindex {ifindex} tcx {direction}")
    return prog_id


def tcx_attached(ifindex: int, prog_fd: int, direction: TcDirection) -> bool:
    """Whether a program named as ``prog_fd``'s is on the hook."""
    name = _prog_info(prog_fd)[1]
    return any(n == name for _, n in tcx_programs(ifindex, direction))


def tcx_detach(ifindex: int, prog_fd: int, direction: TcDirection) -> bool:
    """Detaches the programs named as ``prog_fd``'s from the hook; False when there was none."""
    name = _prog_info(prog_fd)[1]
    detached = False
    with _tcx_entries(ifindex, direction) as entries:
        for _, old_name, old_fd in entries:
            if old_name != name:
                continue
            ret = int(_C.bpf_prog_detach2(old_fd, ifindex, _TCX_POINTS[direction]))
            if ret == -_errno.ENOENT:
                continue  # detached by someone else since the query
            _check(ret, "bpf_prog_detach2", f"ifindex {ifindex} tcx {direction}")
            detached = True
    return detached


# ---------------------------------------------------------------------------------------------
# Ring buffer
# ---------------------------------------------------------------------------------------------


class RingBuffer(_Owned):
    """Consumer of a BPF_MAP_TYPE_RINGBUF map, read through its memory mapping in batches.

    The kernel's layout (kernel/bpf/ringbuf.c; libbpf's ringbuf.c reads it the same way): page 0
    holds the consumer position (mapped read-write: the consumer advances it), page 1 the
    producer position, then the data area, which the kernel maps twice in a row so that a record
    that wraps past the end reads as one contiguous slice (both mapped read-only). Records are
    8-byte aligned ``[len|flags u32][pgoff u32][payload]``: BUSY set means reserved but not
    committed yet (it ends the batch: records after it wait, in order); DISCARD means skip it.

    :meth:`peek` copies the span between the consumer and producer positions (one copy, no call
    per record); :func:`ring_records` walks its headers; :meth:`advance` hands the bytes taken
    back to the datapath. Between the two, the records stay in the ring: a reader that stops
    early (a full sink) advances past what it took only. :meth:`consume` / :meth:`poll` are the
    per-record convenience (``callback`` gets each payload as bytes); if it raises, consumption
    stops there, the record that raised counts as consumed, and the error propagates.

    ``map_fd`` may be closed after construction (the mappings and the epoll set keep the map).
    Ordering: the positions and headers are read with plain aligned 8-/4-byte loads and the
    consumer position written with one aligned store, which x86-64's memory model orders as
    libbpf's acquire loads and release store (on a weakly ordered CPU such as aarch64 these
    would need barriers that Python cannot issue: the datapath targets x86-64).
    """

    def __init__(self, map_fd: int, callback: Callable[[bytes], None] | None = None) -> None:
        self._callback = callback
        info = _map_info(map_fd)
        if info.type != BPF_MAP_TYPE_RINGBUF:
            raise bpf_error(_errno.EINVAL, "ringbuf mmap", f"map fd {map_fd} is not a ring buffer")
        size = info.max_entries  # a power of two, a multiple of the page size
        page = mmap.PAGESIZE
        self._mask = size - 1
        try:
            self._cons_map = mmap.mmap(
                map_fd, page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
            try:
                self._prod_map = mmap.mmap(
                    map_fd, page + 2 * size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=page
                )
            except OSError:
                self._cons_map.close()
                raise
        except OSError as err:
            raise bpf_error(err.errno or _errno.EINVAL, "ringbuf mmap", f"map fd {map_fd}") from err
        self._cons = ctypes.c_uint64.from_buffer(self._cons_map)
        self._positions = memoryview(self._prod_map)
        self._prod = self._positions[:8].cast("Q")
        self._data = self._positions[page:]
        self._epoll: select.epoll | None = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    @property
    def _ep(self) -> select.epoll:
        if self._epoll is None:
            raise ValueError("operation on a closed RingBuffer")
        return self._epoll

    def epoll_fd(self) -> int:
        """An fd that becomes readable when records are available (for loop.add_reader)."""
        return self._ep.fileno()

    def peek(self, max_bytes: int | None = None) -> bytes:
        """A copy of the bytes between the consumer and producer positions, at most
        ``max_bytes`` of them: records with their headers (walk them with
        :func:`ring_records`, which leaves a record cut at the end for the next peek); nothing
        is consumed."""
        self._ep  # noqa: B018 - raises once closed
        cons = self._cons.value
        size = self._prod[0] - cons
        if max_bytes is not None:
            size = min(size, max_bytes)
        start = cons & self._mask
        return self._data[start : start + size].tobytes()

    def advance(self, nbytes: int) -> None:
        """Consumes ``nbytes`` of the last :meth:`peek` (whole records, as :func:`ring_records`
        ends them): the datapath may reuse that space."""
        if nbytes % RINGBUF_HDR_SZ or nbytes < 0:
            raise ValueError(f"ring buffer advance by {nbytes}: not whole 8-byte-aligned records")
        if nbytes:
            self._ep  # noqa: B018
            self._cons.value += nbytes  # one aligned 8-byte store (x86-64: a release store)

    def consume(self) -> int:
        """Hands every committed record to the callback without waiting; returns how many."""
        if self._callback is None:
            raise ValueError("RingBuffer.consume needs a callback")
        span = self.peek()
        records, end = ring_records(span)
        taken = 0
        try:
            for offset, length in records:
                taken = _align8(offset + length)  # the record that raises counts as consumed
                self._callback(span[offset : offset + length])
            taken = end
        finally:
            self.advance(taken)
        return len(records)

    def poll(self, timeout_ms: int) -> int:
        """Waits up to ``timeout_ms`` (-1: forever) for records and handles them."""
        try:
            self._ep.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        except InterruptedError:
            return 0
        return self.consume()

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
            del self._cons
            self._prod.release()
            self._data.release()
            self._positions.release()
            self._cons_map.close()
            self._prod_map.close()

    def _owns_resource(self) -> bool:
        return getattr(self, "_epoll", None) is not None


def _align8(n: int) -> int:
    return (n + 7) & ~7


def ring_records(span: bytes) -> tuple[list[tuple[int, int]], int]:
    """The committed records of a :meth:`RingBuffer.peek` span, in order, as (payload offset,
    payload length), and the offset where they end (the first BUSY record, a record the span
    cut short, or the span's end): the bytes to :meth:`RingBuffer.advance` once all are taken.
    DISCARD records are skipped."""
    records: list[tuple[int, int]] = []
    unpack = _RINGBUF_HDR.unpack_from
    offset, end = 0, len(span)
    while offset + RINGBUF_HDR_SZ <= end:
        (word,) = unpack(span, offset)
        length = word & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT)
        following = offset + ((length + RINGBUF_HDR_SZ + 7) & ~7)
        if word & RINGBUF_BUSY_BIT or following > end:
            break
        if not word & RINGBUF_DISCARD_BIT:
            records.append((offset + RINGBUF_HDR_SZ, length))
        offset = following
    return records, offset


# ---------------------------------------------------------------------------------------------
# BTF: struct layouts as the compiler laid them out
# ---------------------------------------------------------------------------------------------


class _BtfType(ctypes.Structure):
    """``struct btf_type`` (linux/btf.h); ``size`` shares a union with ``type``."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    """``struct btf_member``: ``vlen`` of these follow a STRUCT's btf_type."""

    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class StructLayout:
    """A struct as BTF describes it. ``fields``: name -> (offset, size) in bytes for
    byte-addressable members; ``bitfields``: name -> (bit offset, bit size). Anonymous members
    are named ``<anon N>`` by position."""

    name: str
    size: int
    fields: dict[str, tuple[int, int]]
    bitfields: dict[str, tuple[int, int]]


def _btf_kind(info: int) -> int:
    return (info >> 24) & 0x1F


def _int_encoding(btf: int, type_id: int) -> tuple[int, int] | None:
    """(bit offset, bits) of a BTF INT type, None for other kinds."""
    ptr = _C.btf__type_by_id(btf, type_id)
    if not ptr:
        return None
    t = _BtfType.from_address(ptr)
    if _btf_kind(int(t.info)) != _BTF_KIND_INT:
        return None
    enc = ctypes.c_uint32.from_address(ptr + ctypes.sizeof(_BtfType)).value
    return (enc >> 16) & 0xFF, enc & 0xFF


def struct_layout(object_path: os.PathLike[str] | str, struct_name: str) -> StructLayout:
    """The layout of ``struct struct_name`` in the BTF of the ELF object at ``object_path``."""
    btf = _check_ptr(
        _C.btf__parse_elf(os.fsencode(object_path), None), "btf__parse_elf", str(object_path)
    )
    try:
        type_id = _check(
            int(_C.btf__find_by_name_kind(btf, struct_name.encode(), _BTF_KIND_STRUCT)),
            "btf__find_by_name_kind",
            f"struct {struct_name}",
        )
        ptr = _check_ptr(_C.btf__type_by_id(btf, type_id), "btf__type_by_id")
        t = _BtfType.from_address(ptr)
        info = int(t.info)
        vlen, kind_flag = info & 0xFFFF, info >> 31
        members = (_BtfMember * vlen).from_address(ptr + ctypes.sizeof(_BtfType))
        fields: dict[str, tuple[int, int]] = {}
        bitfields: dict[str, tuple[int, int]] = {}
        for index, m in enumerate(members):
            name = _name(_C.btf__name_by_offset(btf, m.name_off)) or f"<anon {index}>"
            offset = int(m.offset)
            if kind_flag:
                # kind_flag: offset = bitfield size << 24 | bit offset; size 0 = not a bitfield
                bit_off, bit_size = offset & 0xFFFFFF, offset >> 24
            else:
                # legacy encoding: a bitfield is an INT member whose bits differ from its size
                bit_off, bit_size = offset, 0
                enc = _int_encoding(btf, int(m.type))
                size = int(_C.btf__resolve_size(btf, m.type))
                if enc is not None and (enc[0] or enc[1] != size * 8):
                    bit_off, bit_size = offset + enc[0], enc[1]
            if bit_size:
                bitfields[name] = (bit_off, bit_size)
                continue
            size = _check(int(_C.btf__resolve_size(btf, m.type)), "btf__resolve_size", name)
            fields[name] = (bit_off // 8, size)
        return StructLayout(struct_name, int(t.size), fields, bitfields)
    finally:
        _C.btf__free(btf)
