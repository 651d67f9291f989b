"""``ciliary workload`` imports only the module of the workload it runs (``WORKLOADS``): checked
in a fresh interpreter (this one has them all), and the one-module parser must render help and
errors exactly as the full one."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest

from ciliary.workload.main import WORKLOADS, build_parser, module_of

_PROBE = """
import contextlib, io, sys
from ciliary.workload.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(sys.argv[1:])
print(" ".join(sorted(m for m in sys.modules if m == "dns" or m.startswith("ciliary.workload."))))
"""


def test_a_workload_imports_only_its_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "pause", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # common is what every workload shares; dnspython (``dns``) only the DNS tools need
    assert out.stdout.split() == [
        "ciliary.workload.common",
        "ciliary.workload.main",
        "ciliary.workload.pause",
    ]


def test_workload_table_matches_the_full_parser() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "workload")
    assert sub.choices is not None
    assert set(sub.choices) == {name for _module, names in WORKLOADS for name in names}
    for module, names in WORKLOADS:
        for name in names:
            assert module_of(name) == module


def _render(only: str | None, argv: list[str]) -> tuple[int | str | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        pytest.raises(SystemExit) as exc,
    ):
        build_parser(only).parse_args(argv)
    return exc.value.code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "argv",
    [["pause", "--help"], ["http-get"], ["udp-echo", "--help"], ["dns-query", "--bogus"]],
    ids=" ".join,
)
def test_one_module_parser_renders_like_the_full_one(argv: list[str]) -> None:
    assert _render(module_of(argv[0]), argv) == _render(None, argv)
