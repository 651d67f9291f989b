"""``ciliary workload ...``: the in-pod traffic tools, reachable from the one ``ciliary`` command.

Everything after ``workload`` is handed untouched to ``ciliary.workload.main`` (which has its own
argparse), so that it can also run standalone inside a pod; ``main`` intercepts the word before
its own parser sees options meant for the workload.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time the workload path loads neither the output layer nor the client
    from ciliary.cli.output import Context, Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "workload", help="pod-side traffic tools (servers, clients); see `ciliary workload -h`"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the workload command")
    p.set_defaults(func=run)


def delegate(argv: list[str]) -> int:
    from ciliary.workload.main import main as workload_main  # noqa: PLC0415 (lazy import)

    return workload_main(argv)


def run(args: argparse.Namespace, ctx: Context) -> int:
    return delegate(list(args.args))
