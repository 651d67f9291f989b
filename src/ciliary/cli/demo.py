"""``ciliary demo``: the guided tour (``make demo``), implemented by ``ciliary.lab.demo``.

Only the entry point lives here so that the tour can print with the same console settings as
every other command and fail with the same ``Error:`` line.
"""

from __future__ import annotations

import argparse

from ciliary.cli.output import Context, Subparsers, require_root


def register(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="build a lab and walk through what ciliary does")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    from ciliary.lab import demo  # noqa: PLC0415 (lazy import)

    return demo.run(ctx.console)
