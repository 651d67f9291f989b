"""``ciliary``: entry point, argument parsing and the one place errors become exit codes.

Every command module only raises; this module turns that into the CLI's contract: a single
``Error: <message>`` line on stderr and exit 1 (argparse's own usage errors exit 2), and
``Error: this command must run as root (try sudo)`` whenever the real cause is a root-only socket
or lab operation seen by a non-root user. ``ciliary workload ...`` is handed over before argparse
sees it, so the workload's own options are never mistaken for ours.

Each subcommand's module is imported only when that subcommand runs: the e2e suite calls this CLI
hundreds of times and importing every command (grpc, protobuf, the policy schema) cost ~0.75 s of
CPU per call. When the first word names a command (see ``COMMANDS``), the parser holds that
command alone, which argparse renders and rejects exactly as the full parser would (the top-level
usage says ``COMMAND``, not the list); anything else (``--help``, no command, an unknown one)
builds the full parser from every module, so its help and errors are unchanged. ``ciliary
workload`` (the tools every pod runs) is handed over before the output layer or the agent client
is even imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, cast

from ciliary import __version__

if TYPE_CHECKING:  # imported where used: ``ciliary workload`` (every pod) needs neither
    from ciliary.cli.output import Context, Subparsers

DEBUG_ENV = "CILIARY_DEBUG"
"""Set to 1 to get the traceback of an unexpected error instead of the one-line message."""

COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("status", ("status",)),
    ("health", ("health",)),
    ("endpoint", ("endpoint", "ep")),
    ("identity", ("identity",)),
    ("policy", ("policy",)),
    ("ipam", ("ipam",)),
    ("service", ("service",)),
    ("fqdn", ("fqdn",)),
    ("bpf", ("bpf",)),
    ("monitor", ("monitor",)),
    ("hubble", ("observe", "hubble")),
    ("lab", ("lab",)),
    ("workload", ("workload",)),
    ("demo", ("demo",)),
    ("version", ("version",)),
)
"""Each ``ciliary.cli.<module>`` in help order, with the top-level names (aliases included) its
``register`` adds; a test checks these names against the full parser."""


class _CommandModule(Protocol):
    def register(self, sub: Subparsers) -> None: ...


def _command_module(name: str) -> _CommandModule:
    module: ModuleType = import_module(f"ciliary.cli.{name}")
    return cast(_CommandModule, module)


def command_module_of(word: str) -> str | None:
    """The module registering the top-level command ``word``, None if no command is called so."""
    for module, names in COMMANDS:
        if word in names:
            return module
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every command, or only those of module ``only`` (imports just it)."""
    parser = argparse.ArgumentParser(
        prog="ciliary",
        description="CLI for ciliary: Cilium's datapath, identities and observability, in Python.",
    )
    parser.add_argument(
        "--node",
        metavar="NAME",
        help="talk to this node's agent (default: $CILIARY_AGENT_SOCKET, else the only agent)",
    )
    parser.add_argument("--version", action="version", version=f"ciliary {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, _names in COMMANDS:
        if only is None or module == only:
            _command_module(module).register(sub)
    return parser


def _first_command(argv: Sequence[str]) -> int | None:
    """Index of the first non-global-option word of ``argv`` (the subcommand), if any."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--node":
            i += 2
        elif tok.startswith("--node="):
            i += 1
        elif tok.startswith("-"):
            return None
        else:
            return i
    return None


def _error(message: str) -> int:
    from ciliary.cli.output import one_line  # noqa: PLC0415 (lazy: see the module docstring)

    print(f"Error: {one_line(message)}", file=sys.stderr, flush=True)
    return 1


def _run(args: argparse.Namespace, ctx: Context) -> int:
    from ciliary.cli.output import ROOT_REQUIRED, CLIError, RootRequiredError  # noqa: PLC0415
    from ciliary.client import AgentClientError, AgentPermissionError  # noqa: PLC0415

    try:
        rc = args.func(args, ctx)
        return rc if isinstance(rc, int) else 0
    except RootRequiredError:
        return _error(ROOT_REQUIRED)
    except AgentPermissionError as exc:
        return _error(ROOT_REQUIRED if os.geteuid() != 0 else str(exc))
    except (CLIError, AgentClientError) as exc:
        return _error(str(exc))
    except PermissionError as exc:  # e.g. reading root-only lab state
        return _error(ROOT_REQUIRED if os.geteuid() != 0 else str(exc))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout's reader went away (`ciliary monitor | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        return _error(f"{type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ciliary`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    idx = _first_command(argv)
    if idx is not None and argv[idx] == "workload":
        from ciliary.cli import workload  # noqa: PLC0415 (lazy: see the module docstring)

        try:
            return workload.delegate(argv[idx + 1 :])
        except SystemExit as exc:  # the workload's own argparse
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            return _error(f"{type(exc).__name__}: {exc}")
    parser = build_parser(None if idx is None else command_module_of(argv[idx]))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    from ciliary.cli.output import Context  # noqa: PLC0415 (lazy: see the module docstring)

    return _run(args, Context(node=args.node))


if __name__ == "__main__":
    sys.exit(main())
