"""How close each datapath program is to the verifier's limit on processed instructions.

A program past the kernel's 1,000,000 (BPF_COMPLEXITY_LIMIT_INSNS) does not load, and the agent
with it: cil_from_container stood at 986,505 before its policy lookup became a global function.
This test fails at 90 % instead, while a change can still be reshaped (a global function, a tail
call), and its message names the program and its count. The counts are the kernel's own
(BPF_LOG_STATS), deterministic for one kernel and one object.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from ciliary.datapath.libbpf import VERIFIER_INSN_LIMIT, BPFObject
from ciliary.datapath.loader import default_object_dir

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[2]
HEADROOM = 0.9
OBJECTS = ("bpf_lxc.o", "bpf_host.o", "bpf_overlay.o", "bpf_sock.o", "bpf_sk_lookup.o")


@pytest.fixture(scope="module")
def objects() -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], check=True)
    return default_object_dir()


@pytest.mark.parametrize("name", OBJECTS)
def test_every_program_stays_below_nine_tenths_of_the_limit(objects: Path, name: str) -> None:
    pin_dir = Path("/sys/fs/bpf") / f"ciliary-test-{secrets.token_hex(4)}"
    try:
        with BPFObject.open(objects / name, pin_dir=pin_dir) as obj:
            obj.load(stats=True)
            counts = obj.verified_insns
            assert set(counts) == set(obj.program_names())  # every program was counted
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)
    over = {p: n for p, n in counts.items() if n > HEADROOM * VERIFIER_INSN_LIMIT}
    assert not over, (
        f"{name}: {', '.join(f'{p} {n:,}' for p, n in over.items())} processed instructions,"
        f" over {HEADROOM:.0%} of the verifier's {VERIFIER_INSN_LIMIT:,}: split the path"
        " (a global function or a tail call) before the program stops loading"
    )
    assert all(n > 0 for n in counts.values())


def test_a_maps_only_load_counts_nothing(objects: Path) -> None:
    pin_dir = Path("/sys/fs/bpf") / f"ciliary-test-{secrets.token_hex(4)}"
    try:
        with BPFObject.open(objects / "bpf_overlay.o", pin_dir=pin_dir) as obj:
            obj.load(programs=False, stats=True)
            assert obj.verified_insns == {}
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)
