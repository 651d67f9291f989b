"""Go's text formats, as upstream's ``hubble`` CLI writes them.

Upstream is written in Go, and its output shows it: timestamps in Go's layouts (``StampMilli``,
``RFC3339Nano``...), durations as ``time.Duration.String()`` (``5m1.5s``), counts with thousands
separators and columns aligned by ``text/tabwriter``. Scripts and eyes trained on that output
read ours because these helpers reproduce those formats exactly; they are pure and shared by the
flow printer and the CLI's status and list commands.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

NOT_AVAILABLE = "N/A"
"""What upstream prints for a value it does not have."""

# --------------------------------------------------------------------------- time

TIME_FORMATS = (
    "YearMonthDay",
    "YearMonthDayHour",
    "YearMonthDayHourMinute",
    "StampMilli",
    "RFC3339",
    "RFC3339Milli",
    "RFC3339Micro",
    "RFC3339Nano",
    "RFC1123Z",
)
"""The ``--time-format`` names upstream accepts (case-insensitive; unknown → StampMilli)."""

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _trimmed_fraction(nanos: int, digits: int) -> str:
    """Go's ``.999`` style: up to ``digits`` digits, trailing zeros (and a bare dot) dropped."""
    frac = f"{nanos:09d}"[:digits].rstrip("0")
    return f".{frac}" if frac else ""


def format_timestamp(ts: Timestamp | None, time_format: str = "StampMilli") -> str:
    """A protobuf timestamp in one of Go's layouts, UTC; ``N/A`` when absent or invalid."""
    if ts is None or not 0 <= ts.nanos < 1_000_000_000:
        return NOT_AVAILABLE
    try:
        dt = datetime.fromtimestamp(ts.seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return NOT_AVAILABLE
    if not 1 <= dt.year <= 9999:
        return NOT_AVAILABLE
    nanos = ts.nanos
    date = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}"
    hms = f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    match time_format.lower():
        case "yearmonthday":
            return date
        case "yearmonthdayhour":
            return f"{date}T{dt.hour:02d}Z"
        case "yearmonthdayhourminute":
            return f"{date}T{dt.hour:02d}:{dt.minute:02d}Z"
        case "rfc3339":
            return f"{date}T{hms}Z"
        case "rfc3339milli":
            return f"{date}T{hms}{_trimmed_fraction(nanos, 3)}Z"
        case "rfc3339micro":
            return f"{date}T{hms}{_trimmed_fraction(nanos, 6)}Z"
        case "rfc3339nano":
            return f"{date}T{hms}{_trimmed_fraction(nanos, 9)}Z"
        case "rfc1123z":
            return (
                f"{_DAYS[dt.weekday()]}, {dt.day:02d} {_MONTHS[dt.month - 1]} {dt.year:04d} "
                f"{hms} +0000"
            )
        case _:  # StampMilli: "Jan _2 15:04:05.000"
            return f"{_MONTHS[dt.month - 1]} {dt.day:2d} {hms}.{nanos // 1_000_000:03d}"


# --------------------------------------------------------------------------- numbers


def group_thousands(n: int) -> str:
    """``2,348,885``: how upstream prints flow counts."""
    return f"{n:,}"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: ``5m1.515181665s``, ``1h0m0s``, ``1.5ms``, ``0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                whole, frac = divmod(ns, size)
                digits = len(str(size)) - 1
                tail = f"{frac:0{digits}d}".rstrip("0") if digits else ""
                return f"{sign}{whole}{'.' + tail if tail else ''}{unit}"
    secs, frac = divmod(ns, 1_000_000_000)
    hours, rem = divmod(secs, 3600)
    minutes, secs = divmod(rem, 60)
    tail = f"{frac:09d}".rstrip("0")
    out = f"{secs}{'.' + tail if tail else ''}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{out}"
    if minutes:
        return f"{sign}{minutes}m{out}"
    return sign + out


# --------------------------------------------------------------------------- tab writer


class TabWriter:
    """Go's ``tabwriter.NewWriter(w, 2, 0, 3, ' ', 0)`` for rows of cells: every column but
    the last is padded to its widest cell plus 3 spaces (at least 2)."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def row(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def render(self) -> list[str]:
        widths: dict[int, int] = {}
        for row in self.rows:
            for i, cell in enumerate(row[:-1]):
                widths[i] = max(widths.get(i, 0), len(cell))
        lines = []
        for row in self.rows:
            cells = [c.ljust(max(2, widths[i] + 3)) for i, c in enumerate(row[:-1])]
            lines.append("".join(cells) + (row[-1] if row else ""))
        return lines
