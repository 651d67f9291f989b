"""Shared rendering and error plumbing of the CLI commands.

Why in one place: every listing command has the same two faces (a rich table for people,
``-o json`` for scripts and tests) and the same failure contract (one ``Error: ...`` line on
stderr, exit 1). Tables are printed at their natural width whatever the terminal or pipe width,
so output piped to ``grep`` or captured by a test never depends on ``$COLUMNS``; markup and
auto-highlighting are off because the data (IPv6 ``[addr]:port``, labels) contains brackets.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ciliary.client import AgentClient, resolve_agent_socket
from ciliary.core.flow import ReservedIdentity

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers()`` returns; each command module's ``register()`` takes one."""

OUTPUT_FORMATS = ("table", "json")
ROOT_REQUIRED = "this command must run as root (try sudo)"
KEY_WIDTH = 25
"""Width of the ``Key:`` column of ``status``-style output (cilium-dbg uses 25)."""


class CLIError(Exception):
    """A user-facing failure; ``str()`` is printed as ``Error: <message>``."""


class RootRequiredError(CLIError):
    def __init__(self) -> None:
        super().__init__(ROOT_REQUIRED)


def require_root() -> None:
    if os.geteuid() != 0:
        raise RootRequiredError()


# --------------------------------------------------------------------------- context


def make_console(*, stderr: bool = False) -> Console:
    return Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False, emoji=False)


@dataclass
class Context:
    """What every command gets: the agent selection and where to print."""

    node: str | None = None
    console: Console = field(default_factory=make_console)
    err_console: Console = field(default_factory=lambda: make_console(stderr=True))

    def socket(self) -> Path:
        return resolve_agent_socket(self.node)

    def client(self, timeout: float = 30.0) -> AgentClient:
        return AgentClient(self.socket(), timeout=timeout)


# --------------------------------------------------------------------------- arguments


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default="table",
        help="output format (default: table)",
    )


def add_node_flag(parser: argparse.ArgumentParser) -> None:
    """``--node`` after the subcommand too (``ciliary endpoint list --node n1``)."""
    parser.add_argument(
        "--node", default=argparse.SUPPRESS, metavar="NAME", help="which node's agent to ask"
    )


def wants_json(args: argparse.Namespace) -> bool:
    return getattr(args, "output", "table") == "json"


# --------------------------------------------------------------------------- JSON


def to_jsonable(value: Any) -> Any:
    """Pydantic models (and lists/dicts of them) as plain JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any, *, indent: int | None = 2) -> None:
    """Write ``value`` as JSON to stdout (raw: no rich markup, no wrapping) and flush."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=indent) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- tables


def new_table(*headers: str, title: str | None = None) -> Table:
    """A ``cilium-dbg``-looking table: no borders, bold upper-case headers, no wrapping."""
    table = Table(
        box=None,
        title=title,
        title_justify="left",
        header_style="bold",
        pad_edge=False,
        padding=(0, 3, 0, 0),
        show_edge=False,
    )
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    return table


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` at its natural width, however narrow the console or pipe is.

    Lines are right-stripped: borderless tables pad every cell, and trailing blanks only get
    in the way of ``grep``/``diff`` and of tests.
    """
    options = console.options.update_width(100_000)
    width = Measurement.get(console, options, table).maximum
    for line in console.render_lines(table, options.update_width(width), pad=False):
        text = Text()
        for seg in line:
            if seg.control is None:
                text.append(seg.text, seg.style)
        text.rstrip()
        console.print(text)


def print_kv(
    console: Console, rows: Iterable[tuple[str, RenderableType | str]], *, indent: int = 0
) -> None:
    """``Key:   value`` lines aligned like ``cilium-dbg status``; multi-line values indented."""
    pad = " " * indent
    for key, value in rows:
        label = f"{pad}{key}:".ljust(max(KEY_WIDTH, len(key) + indent + 2))
        lines: list[Text]
        if isinstance(value, Text):
            lines = list(value.split("\n", allow_blank=True))
        elif isinstance(value, str):
            lines = [Text(line) for line in value.split("\n")]
        else:
            console.print(Text(label.rstrip()))
            console.print(value)
            continue
        for i, line in enumerate(lines or [Text("")]):
            head = label if i == 0 else " " * len(label)
            text = Text(head) + line
            text.rstrip()
            console.print(text)


# --------------------------------------------------------------------------- value formatting


def fmt_duration(seconds: float) -> str:
    """Go-style compact durations: ``850ms``, ``12s``, ``3m4s``, ``2h5m``, ``3d4h``."""
    if seconds < 0:
        return "-" + fmt_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    total = int(seconds)
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def fmt_time(epoch: float) -> str:
    """RFC 3339 UTC, second precision."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_addr(ip: str, port: int | None = None) -> str:
    """``ip:port``, with IPv6 addresses in brackets (``[fd00::1]:80``)."""
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def fmt_identity(identity: int) -> str:
    """The number, plus the reserved label for reserved identities (``2 (reserved:world)``)."""
    try:
        return f"{identity} ({ReservedIdentity(identity).label})"
    except ValueError:
        return str(identity)


def fmt_bool(value: bool, yes: str = "yes", no: str = "no") -> Text:
    return Text(yes, style="green") if value else Text(no, style="bold red")


def fmt_opt(value: object, empty: str = "-") -> str:
    return empty if value is None or value == "" else str(value)


def k8s_labels(labels: Mapping[str, str], namespace: str | None = None) -> list[str]:
    """Labels as Cilium prints them (``k8s:app=web``), with the pod-namespace label added."""
    out: set[str] = set()
    for key, value in labels.items():
        name = key if ":" in key else f"k8s:{key}"
        out.add(f"{name}={value}" if value != "" else name)
    if namespace:
        out.add(f"k8s:io.kubernetes.pod.namespace={namespace}")
    return sorted(out)


def prefix_sort_key(prefix: str) -> tuple[int, int, int, str]:
    """Sort CIDRs/addresses numerically, IPv4 before IPv6; unparsable ones last."""
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return (9, 0, 0, prefix)
    return (net.version, int(net.network_address), net.prefixlen, prefix)


def one_line(message: str) -> str:
    """Collapse a possibly multi-line message into one line."""
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(parts) if parts else message


def join_nonempty(items: Sequence[str], sep: str = ", ") -> str:
    return sep.join(i for i in items if i)
