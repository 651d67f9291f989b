"""``ciliary policy test FILE``: policy tests as code, checked with real packets in a lab.

Meant for CI as much as for people: a ``PolicyTest`` file lists flows and the verdict each must
get; the command sends each flow's packets in the running lab and compares what the datapath did
(its own FORWARDED/DROPPED event), what the client saw and what ``policy trace`` says. It prints
one row per case and exits 0 only when every case passed, 1 otherwise (a wrong verdict, or the
datapath and the trace disagreeing). ``-o json`` prints the whole report for scripts. The file
format is documented in :mod:`ciliary.lab.policytest`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from ciliary.cli.output import (
    CLIError,
    Context,
    Subparsers,
    add_output_flag,
    new_table,
    print_json,
    print_table,
    require_root,
    wants_json,
)

if TYPE_CHECKING:
    from ciliary.lab.policytest import PolicyTestReport


def register(psub: Subparsers) -> None:
    """Add ``test`` to the ``policy`` subcommands."""
    t = psub.add_parser(
        "test",
        help="check a PolicyTest file with real packets in the running lab (exit 1 on a failure)",
    )
    t.add_argument("file", type=Path, metavar="FILE", help="PolicyTest YAML file")
    t.add_argument("--name", metavar="LAB", help="lab name (default: the only lab)")
    t.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="per-probe timeout (default: the file's spec.timeout, else 2)",
    )
    add_output_flag(t)
    t.set_defaults(func=run_test)


def _verdict(value: str | None) -> Text:
    if value is None:
        return Text("-", style="yellow")
    return Text(value, style="green" if value == "allow" else "red")


def _port(protocol: str, port: int | None) -> str:
    return protocol if port is None else f"{port}/{protocol}"


def render_report(console: Console, report: PolicyTestReport) -> None:
    table = new_table(
        "CASE", "FROM", "TO", "PORT", "EXPECTED", "DATAPATH", "CLIENT", "TRACE", "RULE / REASON",
        "RESULT",
    )  # fmt: skip
    for c in report.cases:
        dp = _verdict(c.datapath)
        if c.drop_reason is not None:
            dp += Text(f" ({c.drop_reason})")
        table.add_row(
            c.name,
            c.src,
            c.dst if c.dst == c.dst_ip else f"{c.dst} ({c.dst_ip})",
            _port(c.protocol, c.port),
            c.expected,
            dp,
            c.client,
            _verdict(c.trace),
            c.reason,
            Text("PASS", style="bold green") if c.passed else Text("FAIL", style="bold red"),
        )
    print_table(console, table)
    failures = [c for c in report.cases if not c.passed]
    if failures:
        console.print()
        for c in failures:
            for problem in c.problems:
                console.print(Text(f"FAIL {c.name}: ", style="bold red") + Text(problem))
    console.print()
    total = len(report.cases)
    if report.passed:
        console.print(Text(f"{total}/{total} cases passed", style="bold green"))
    else:
        console.print(Text(f"{report.failed} of {total} cases failed", style="bold red"))


def run_test(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    from ciliary.lab import policytest  # noqa: PLC0415 (lazy import: the lab is heavy)

    if args.timeout is not None and not 0 < args.timeout <= 30:
        raise CLIError(f"--timeout must be in (0, 30] seconds, got {args.timeout:g}")
    try:
        tests = policytest.load_file(args.file)
        report = policytest.run(tests, name=args.name, timeout=args.timeout)
    except policytest.PolicyTestError as err:
        for problem in err.problems[:-1]:  # every problem, one line each; the last as the error
            ctx.err_console.print(f"Error: {problem}")
        raise CLIError(err.problems[-1] if err.problems else str(err)) from err
    if wants_json(args):
        print_json(report)
    else:
        render_report(ctx.console, report)
    return 0 if report.passed else 1
