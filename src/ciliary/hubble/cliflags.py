"""``hubble observe`` flags → ``GetFlowsRequest``, with upstream's exact semantics.

The filter flags become allow/deny ``FlowFilter`` lists in :mod:`ciliary.hubble.filterflags`
(their order matters, see there); this module adds the rest of the request: ``--since``/
``--until`` parsing (Go durations like ``1h30m`` or absolute times), ``--last/--first/--all/
--follow`` defaults and checks, ``--allowlist``/``--denylist`` raw JSON filters and the
``--print-raw-filters`` YAML. Nothing here does I/O, so the mapping is tested as a table.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.filterflags import FILTER_FLAGS, FilterFlag, build_filters
from ciliary.hubble.flagvalues import FlagError
from ciliary.hubble.printer import message_json

DEFAULT_LAST = 20
"""Flows printed by a plain ``observe`` (upstream's ``FlowPrintCount``)."""

ALL_FLOWS = 2**64 - 1
"""``--all`` asks for ``number = uint64 max``."""


# --------------------------------------------------------------------------- raw filters


def parse_raw_filters(texts: Sequence[str]) -> list[flow_pb2.FlowFilter]:
    """JSON FlowFilters (proto field or JSON names), several objects per string allowed."""
    out: list[flow_pb2.FlowFilter] = []
    decoder = json.JSONDecoder()
    for text in texts:
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            try:
                obj, pos = decoder.raw_decode(text, pos)
                out.append(json_format.ParseDict(obj, flow_pb2.FlowFilter()))
            except (ValueError, json_format.ParseError) as err:
                raise FlagError(f"failed to decode '{text}': {err}") from None
    return out


def raw_filters_yaml(req: observer_pb2.GetFlowsRequest) -> str:
    """``--print-raw-filters``: the request's filters as YAML that ``--allowlist``/
    ``--denylist`` accept back (one JSON FlowFilter per item)."""

    def items(filters: Sequence[flow_pb2.FlowFilter]) -> list[str]:
        return ["    - '" + message_json(f).replace("'", "''") + "'" for f in filters]

    lines: list[str] = []
    if req.whitelist:
        lines += ["allowlist:", *items(req.whitelist)]
    if req.blacklist:
        lines += ["denylist:", *items(req.blacklist)]
    return "\n".join(lines) + "\n" if lines else "{}\n"


# --------------------------------------------------------------------------- time


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` in nanoseconds (``1h30m``, ``90s``, ``1.5h``), else None."""
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * int(total)


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_YMD = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_YMDH = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})(?::(\d{2}))?(Z|[+-]\d{2}:\d{2})")
_RFC1123Z = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}")


def parse_time(text: str, now_ns: int | None = None) -> int:
    """``--since``/``--until`` value → nanoseconds since the epoch.

    A Go duration means that long ago (``5m``, ``1h30m``); otherwise one of upstream's layouts:
    ``2006-01-02``, ``2006-01-02T15Z07:00``, ``2006-01-02T15:04Z07:00``, RFC 3339 with optional
    fraction, RFC 1123 with numeric zone.
    """
    now = time.time_ns() if now_ns is None else now_ns
    duration = parse_go_duration(text)
    if duration is not None:
        return now - duration
    try:
        if _ISO.fullmatch(text):
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            frac = text.split(".", 1)[1] if "." in text else ""
            digits = re.match(r"\d*", frac)
            nanos = int((digits.group(0) if digits else "").ljust(9, "0")[:9] or "0")
            whole = int(dt.replace(microsecond=0).timestamp())
            return whole * 1_000_000_000 + nanos
        if m := _YMD.fullmatch(text):
            dt = datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=UTC)
            return int(dt.timestamp()) * 1_000_000_000
        if m := _YMDH.fullmatch(text):
            zone = "+00:00" if m[4] == "Z" else m[4]
            dt = datetime.fromisoformat(f"{m[1]}T{m[2]}:{m[3] or '00'}:00{zone}")
            return int(dt.timestamp()) * 1_000_000_000
        if _RFC1123Z.fullmatch(text):
            return int(parsedate_to_datetime(text).timestamp()) * 1_000_000_000
    except ValueError:
        pass
    raise FlagError(f"failed to convert {text} to time")


def timestamp_from_ns(ns: int) -> Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Selector:
    """``--last``, ``--first``, ``--all``, ``--follow``, ``--since``, ``--until``."""

    last: int = 0
    first: int = 0
    all: bool = False
    follow: bool = False
    since: str = ""
    until: str = ""
    from_file: bool = False
    """Reading ``--input-file``: no implicit ``--last 20``."""


def build_request(
    selector: Selector,
    *,
    allow: Sequence[flow_pb2.FlowFilter] = (),
    deny: Sequence[flow_pb2.FlowFilter] = (),
    raw_allow: Sequence[str] = (),
    raw_deny: Sequence[str] = (),
    now_ns: int | None = None,
) -> observer_pb2.GetFlowsRequest:
    """The GetFlowsRequest upstream's ``observe`` sends; FlagError with its messages."""
    first, last = selector.first > 0, selector.last > 0
    if first and last:
        raise FlagError("cannot set both --first and --last")
    if first and selector.all:
        raise FlagError("cannot set both --first and --all")
    if first and selector.follow:
        raise FlagError("cannot set both --first and --follow")
    if last and selector.all:
        raise FlagError("cannot set both --last and --all")
    since = until = None
    if selector.since:
        try:
            since = timestamp_from_ns(parse_time(selector.since, now_ns))
        except FlagError as err:
            raise FlagError(f"failed to parse the since time: {err}") from None
    if selector.until and not selector.follow:
        try:
            until = timestamp_from_ns(parse_time(selector.until, now_ns))
        except FlagError as err:
            raise FlagError(f"failed to parse the until time: {err}") from None
    number = selector.last
    if since is None and until is None and not first:
        if selector.all:
            number = ALL_FLOWS
        elif number == 0 and not selector.follow and not selector.from_file:
            number = DEFAULT_LAST
    if first:
        number = selector.first
    try:
        extra_allow = parse_raw_filters(raw_allow)
    except FlagError as err:
        raise FlagError(f"invalid --allowlist flag: {err}") from None
    try:
        extra_deny = parse_raw_filters(raw_deny)
    except FlagError as err:
        raise FlagError(f"invalid --denylist flag: {err}") from None
    req = observer_pb2.GetFlowsRequest(
        number=number,
        first=first,
        follow=selector.follow,
        whitelist=[*allow, *extra_allow],
        blacklist=[*deny, *extra_deny],
    )
    if since is not None:
        req.since.CopyFrom(since)
    if until is not None:
        req.until.CopyFrom(until)
    return req


__all__ = [
    "ALL_FLOWS",
    "DEFAULT_LAST",
    "FILTER_FLAGS",
    "FilterFlag",
    "FlagError",
    "Selector",
    "build_filters",
    "build_request",
    "parse_go_duration",
    "parse_raw_filters",
    "parse_time",
    "raw_filters_yaml",
    "timestamp_from_ns",
]
