"""Every ctypes mirror in ciliary.datapath.maps matches its C struct as compiled into bpf_lxc.o
(or the object its ``C_OBJECT`` names: the NAT structs live in bpf_host.o).

The compiler's BTF is the ground truth: size, field set, field order, offsets and sizes. A field
added on one side only fails here instead of silently corrupting a map.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from ciliary.datapath.libbpf import BPFError, BPFNotFoundError, struct_layout
from ciliary.datapath.maps import ALL_MIRRORS

REPO = Path(__file__).resolve().parents[2]
LXC_OBJECT = REPO / "bpf" / "bpf_lxc.o"


@pytest.fixture(scope="module")
def lxc_object() -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], check=True)
    return LXC_OBJECT


def test_mirrors_cover_every_shared_struct() -> None:
    names = [m.C_NAME for m in ALL_MIRRORS]  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    assert set(names) == {
        "endpoint_key",
        "endpoint_info",
        "ipcache_key",
        "ipcache_info",
        "ct_key",
        "ct_entry",
        "dp_config",
        "trace_event",
        "trace_sock_notify",
        "policy_key",
        "policy_entry",
        "nat_key",
        "nat_entry",
        "nat_config",
        "lb4_key",
        "lb6_key",
        "lb_service",
        "lb4_backend",
        "lb6_backend",
        "lb4_reverse_nat",
        "lb6_reverse_nat",
        "lb4_affinity_key",
        "lb6_affinity_key",
        "lb_affinity_val",
        "lb_affinity_match",
        "lb_src_range_key",
        "lb_maglev_config",
    }


@pytest.mark.parametrize("mirror", ALL_MIRRORS, ids=lambda m: m.C_NAME)
def test_mirror_matches_btf(lxc_object: Path, mirror: type[ctypes.Structure]) -> None:
    c_name: str = mirror.C_NAME  # type: ignore[attr-defined]
    obj = lxc_object.parent / getattr(mirror, "C_OBJECT", lxc_object.name)
    layout = struct_layout(obj, c_name)

    assert mirror.__doc__ is not None and f"struct {c_name}`" in mirror.__doc__
    assert ctypes.sizeof(mirror) == layout.size, f"sizeof(struct {c_name})"
    assert layout.bitfields == {}

    ours = [f[0] for f in mirror._fields_]
    theirs = list(layout.fields)
    assert set(ours) - set(theirs) == set(), f"mirror has fields struct {c_name} lacks"
    assert set(theirs) - set(ours) == set(), f"struct {c_name} has fields the mirror lacks"
    assert ours == theirs, "field order differs"
    for name in ours:
        descriptor = getattr(mirror, name)
        assert (descriptor.offset, descriptor.size) == layout.fields[name], f"{c_name}.{name}"


def test_struct_layout_decodes_bitfields(tmp_path: Path) -> None:
    src = tmp_path / "bits.c"
    src.write_text(
        "struct bits { unsigned int a:3; unsigned int b:5; unsigned char c;"
        " unsigned long long d; int e[3]; struct { short x; }; };\n"
        "struct bits g_bits;\n"
    )
    obj = tmp_path / "bits.o"
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-g", "-c", str(src), "-o", str(obj)], check=True
    )

    layout = struct_layout(obj, "bits")

    assert layout.size == 32
    assert layout.bitfields == {"a": (0, 3), "b": (3, 5)}
    assert layout.fields == {"c": (1, 1), "d": (8, 8), "e": (16, 12), "<anon 5>": (28, 2)}


def test_struct_layout_errors(lxc_object: Path, tmp_path: Path) -> None:
    with pytest.raises(BPFNotFoundError) as missing:
        struct_layout(lxc_object, "no_such_struct")
    assert missing.value.op == "btf__find_by_name_kind"

    garbage = tmp_path / "garbage.o"
    garbage.write_bytes(b"not an ELF file" * 10)
    with pytest.raises(BPFError) as bad:
        struct_layout(garbage, "trace_event")
    assert bad.value.op == "btf__parse_elf"
