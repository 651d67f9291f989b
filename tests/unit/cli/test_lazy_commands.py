"""The CLI imports a command's module only when that command runs (``ciliary.cli.main``).

Guards both halves of that contract: a light command pulls in none of the heavy libraries it does
not use (checked in a fresh interpreter, since this test process has them all loaded), and the
one-command parser that makes this possible renders help and errors exactly like the full one.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from ciliary.cli.main import COMMANDS, build_parser, command_module_of

HEAVY = ("grpc", "google.protobuf", "ciliary.policy.api.schema", "cryptography", "pyroute2")
"""Modules no light command needs: gRPC/protobuf (Hubble), the policy schema, the lab."""

_PROBE = """
import contextlib, io, sys
from ciliary.cli.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(sys.argv[1:])
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""

WORKLOAD_UNNEEDED = (*HEAVY, "ciliary.cli.output", "ciliary.client", "pydantic", "httpx", "rich")
"""``ciliary workload`` (what every pod runs) needs none of the CLI's output layer or client."""


def _heavy_imported(argv: list[str], tmp_path: Path, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    env = {"CILIARY_AGENT_SOCKET": str(tmp_path / "no-agent.sock"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=heavy), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return out.stdout.split()


@pytest.mark.parametrize(
    "argv",
    [
        ["version"],
        ["endpoint", "list"],
        ["ep", "ls", "--help"],
        ["status", "--help"],
        ["identity", "list", "--help"],
        ["bpf", "ct", "list", "--help"],
        ["policy", "get", "--help"],
        ["lab", "--help"],
    ],
    ids=" ".join,
)
def test_light_commands_import_no_heavy_module(argv: list[str], tmp_path: Path) -> None:
    assert _heavy_imported(argv, tmp_path) == []


@pytest.mark.parametrize(
    "argv", [["workload", "--help"], ["workload", "no-such-tool"]], ids=" ".join
)
def test_workload_imports_no_cli_output_or_client(argv: list[str], tmp_path: Path) -> None:
    assert _heavy_imported(argv, tmp_path, WORKLOAD_UNNEEDED) == []


def test_command_table_matches_the_full_parser() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command" and a.choices is not None)
    assert sub.choices is not None
    assert set(sub.choices) == {name for _module, names in COMMANDS for name in names}
    for module, names in COMMANDS:
        for name in names:
            assert command_module_of(name) == module
    assert command_module_of("no-such-command") is None


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
    [
        ["version", "--help"],
        ["version", "--bogus"],
        ["ep", "ls", "--help"],
        ["endpoint", "get"],
        ["--node", "n1", "status", "extra"],
        ["policy", "nope"],
        ["hubble", "observe", "--last", "x"],
        ["lab", "up", "--help"],
    ],
    ids=" ".join,
)
def test_one_command_parser_renders_like_the_full_one(argv: list[str]) -> None:
    word = next(w for w in argv if w in {n for _m, names in COMMANDS for n in names})
    assert _render(command_module_of(word), argv) == _render(None, argv)
