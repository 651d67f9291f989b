"""The numbers the datapath emits are the ones ciliary.core.flow names.

The C side defines each number once (``#define`` in ``bpf/lib/*.h``), the Python side once
(``ciliary.core.flow``). The preprocessor tells what the compiled programs see: every attach
point is preprocessed with the Makefile's flags and every macro of a vocabulary (``EVENT_*``,
``VERDICT_*``, ``OBS_*``, ``DROP_*``, ...) is compared with its Python name. A number added on
one side only, or renumbered on one, fails here.
"""

from __future__ import annotations

import re
import subprocess
from enum import IntEnum
from pathlib import Path

import pytest

from ciliary.core.flow import (
    DROP_REASON_NAMES,
    DROP_REASONS,
    TCP_FLAG_BITS,
    CTState,
    EventType,
    ObservationPoint,
    PolicyMatchType,
    ReservedIdentity,
    SockL4Protocol,
    SockXlatePoint,
    TrafficDirection,
    Verdict,
)
from ciliary.hubble.api.flow import flow_pb2

BPF = Path(__file__).resolve().parents[2] / "bpf"
_DEFINE = re.compile(r"^#define (\w+) (\S+)$")


def _flags() -> list[str]:
    """CFLAGS as the Makefile computes them (``make -pn`` prints the expanded variable)."""
    out = subprocess.run(
        ["make", "-s", "-C", str(BPF), "--no-print-directory", "-pn", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("CFLAGS :="))
    flags = line.split(":=", 1)[1].split()
    assert flags, "bpf/Makefile defines no CFLAGS"
    return flags


@pytest.fixture(scope="module")
def macros() -> dict[str, int]:
    """Every integer macro the attach points are compiled with, by name."""
    flags = _flags()
    found: dict[str, int] = {}
    for source in sorted(BPF.glob("bpf_*.c")):
        out = subprocess.run(
            ["clang", *flags, "-dM", "-E", source.name],
            cwd=BPF,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            m = _DEFINE.match(line)
            if m is None:
                continue
            try:
                found[m[1]] = int(m[2], 0)
            except ValueError:
                continue
    assert "EVENT_TRACE" in found, "the preprocessor saw no datapath header"
    return found


def _group(macros: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in macros.items() if k.startswith(prefix)}


@pytest.mark.parametrize(
    ("prefix", "enum", "renames"),
    [
        ("EVENT_", EventType, {}),
        ("VERDICT_", Verdict, {}),
        ("OBS_", ObservationPoint, {}),
        ("CT_", CTState, {}),
        ("ID_", ReservedIdentity, {}),
        ("XLATE_", SockXlatePoint, {}),
        ("TRAFFIC_", TrafficDirection, {}),
        ("POLICY_MATCH_", PolicyMatchType, {}),
        ("L4_PROTOCOL_", SockL4Protocol, {}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_c_number_has_its_python_name(
    macros: dict[str, int], prefix: str, enum: type[IntEnum], renames: dict[str, str]
) -> None:
    c_side = _group(macros, prefix)
    if prefix == "CT_":  # CT_F_*, CT_SCOPE_* are conntrack flags, not states
        c_side = {k: v for k, v in c_side.items() if k in CTState.__members__}
    if prefix == "XLATE_":
        c_side = {"SOCK_XLATE_POINT_" + k: v for k, v in c_side.items()}
    assert c_side, f"no {prefix}* macro in the datapath"
    members = {m.name: m.value for m in enum}
    assert {k: members.get(k) for k in c_side} == c_side


def test_every_drop_reason_c_emits_is_named(macros: dict[str, int]) -> None:
    drops = _group(macros, "DROP_")
    assert drops
    unnamed = {k: v for k, v in drops.items() if v not in DROP_REASONS}
    assert unnamed == {}, "drop reasons C emits without a text in core.flow.DROP_REASONS"
    nameless = {k: v for k, v in drops.items() if v not in DROP_REASON_NAMES}
    assert nameless == {}, "drop reasons C emits without a Hubble name in DROP_REASON_NAMES"


def test_drop_reason_names_are_hubbles() -> None:
    assert {
        code: flow_pb2.DropReason.Name(code)  # type: ignore[arg-type]
        for code in DROP_REASON_NAMES
    } == DROP_REASON_NAMES
    assert DROP_REASON_NAMES[178] == "SOCKET_LOOKUP_FAILED"
    assert DROP_REASON_NAMES[179] == "SOCKET_ASSIGN_FAILED"


def test_tcp_flag_bits_agree(macros: dict[str, int]) -> None:
    c_side = {k: v for k, v in _group(macros, "TCP_").items() if k in TCP_FLAG_BITS}
    assert c_side  # conntrack.h names FIN, SYN, RST
    assert {k: TCP_FLAG_BITS[k] for k in c_side} == c_side


def test_python_names_match_flow_proto() -> None:
    """The Python enums that are Hubble's are numbered as flow.proto (upstream's copy)."""
    for enum, proto in (
        (Verdict, flow_pb2.Verdict),
        (ObservationPoint, flow_pb2.TraceObservationPoint),
        (SockXlatePoint, flow_pb2.SocketTranslationPoint),
        (TrafficDirection, flow_pb2.TrafficDirection),
    ):
        assert {m.name: m.value for m in enum} == {
            name: proto.Value(name)  # type: ignore[attr-defined]
            for name in (m.name for m in enum)
        }
