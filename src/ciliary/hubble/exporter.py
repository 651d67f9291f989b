"""Hubble's flow export to a file: flows kept beyond the ring buffer, as upstream's exporter.

Why: the observer's ring is a window of a few thousand events, not a history (upstream's own
advice for "requested data has been overwritten" is: export). The exporter writes every event
the observer sees, filtered, as one JSON document per line, in upstream's format — an
``observer.ExportEvent`` (``{"flow": {...}, "node_name": "...", "time": "..."}``, also
``lost_events`` and ``agent_event``) rendered by protobuf's JSON printer with the proto field names,
as upstream's protojson output (``UseProtoNames``) — so tools that read upstream's export files
(``hubble observe --input-file``, log shippers) read ours.

Options mirror upstream's ``--hubble-export-*`` flags: file path, size-based rotation (max size in
MB, number of rotated backups kept: ``path.1`` … ``path.N``, by the standard library's
RotatingFileHandler; files are created 0600), ``--hubble-export-allowlist``/``-denylist``
(FlowFilters as JSON, applied as GetFlows' whitelist/blacklist) and
``--hubble-export-fieldmask`` (flow field paths kept, e.g. ``time source.namespace verdict``).
Filters and the field mask apply to flows only; lost and agent events are always written.

Threading: the hooks run on the observer's loop and write synchronously (buffered file writes;
a rotation is a rename): cheap next to decoding a flow.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from logging.handlers import RotatingFileHandler
from pathlib import Path

from google.protobuf import field_mask_pb2, json_format
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.filters import build_filter

log = logging.getLogger(__name__)

MB = 1024 * 1024


def parse_flow_filters(text: str) -> list[flow_pb2.FlowFilter]:
    """FlowFilters from JSON text: one object, several objects one after another (upstream's
    ``--hubble-export-allowlist '{"source_pod":["a/"]},{"verdict":["DROPPED"]}'``) or a list.
    Field names may be the proto names or their JSON (lowerCamel) names. ValueError if invalid."""
    decoder = json.JSONDecoder()
    out: list[flow_pb2.FlowFilter] = []
    pos = 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ","):
            pos += 1
        if pos >= len(text):
            return out
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid flow filter JSON: {err}") from err
        for obj in value if isinstance(value, list) else [value]:
            if not isinstance(obj, dict):
                raise ValueError(f"a flow filter must be a JSON object, not {obj!r}")
            try:
                out.append(json_format.ParseDict(obj, flow_pb2.FlowFilter()))
            except json_format.ParseError as err:
                raise ValueError(f"invalid flow filter {json.dumps(obj)}: {err}") from err


def _filters(value: str | Sequence[flow_pb2.FlowFilter] | None) -> list[flow_pb2.FlowFilter]:
    if value is None:
        return []
    return parse_flow_filters(value) if isinstance(value, str) else list(value)


def parse_field_mask(paths: str | Sequence[str] | None) -> field_mask_pb2.FieldMask | None:
    """Flow field paths (space/comma separated or a list) → a FieldMask; ValueError if a path
    names no Flow field."""
    if paths is None:
        return None
    items = paths.replace(",", " ").split() if isinstance(paths, str) else list(paths)
    if not items:
        return None
    mask = field_mask_pb2.FieldMask(paths=items)
    if not mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
        raise ValueError(f"invalid flow field mask {' '.join(items)!r} (paths of flow.Flow fields)")
    return mask


class _PrivateRotatingFileHandler(RotatingFileHandler):
    """RotatingFileHandler whose files are created 0600 (flows name pods and addresses)."""

    def _open(self) -> io.TextIOWrapper:
        stream = super()._open()
        os.chmod(self.baseFilename, 0o600)  # before anything is written to it
        return stream

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        raise  # noqa: PLE0704 - called from emit's except block: let the exporter see the error


class FlowExporter:
    """Writes ExportEvents as JSON lines to ``path``, rotating at ``max_size_mb`` (0: never)
    and keeping ``max_backups`` rotated files (at least 1 when rotating)."""

    def __init__(
        self,
        path: str | Path,
        max_size_mb: float = 10,
        max_backups: int = 5,
        *,
        allowlist: str | Sequence[flow_pb2.FlowFilter] | None = None,
        denylist: str | Sequence[flow_pb2.FlowFilter] | None = None,
        node_name: str = "",
        field_mask: str | Sequence[str] | None = None,
    ) -> None:
        if max_size_mb < 0:
            raise ValueError(f"export max size must be >= 0 MB, got {max_size_mb}")
        if max_size_mb > 0 and max_backups < 1:
            raise ValueError(
                f"export max backups must be >= 1 when rotating, got {max_backups} "
                "(keeping every rotated file would fill the disk)"
            )
        self.path = Path(path)
        self.node_name = node_name
        self._keep: Callable[[flow_pb2.Flow], bool] = build_filter(
            _filters(allowlist), _filters(denylist)
        )
        self._mask = parse_field_mask(field_mask)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = _PrivateRotatingFileHandler(
            self.path,
            maxBytes=int(max_size_mb * MB),
            backupCount=max_backups,
            encoding="utf-8",
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self.written = 0
        self.filtered = 0
        self.errors = 0

    def _write(self, event: observer_pb2.ExportEvent) -> None:
        line = json_format.MessageToJson(
            event, preserving_proto_field_name=True, indent=None, ensure_ascii=False
        )
        try:
            self._handler.emit(logging.makeLogRecord({"msg": line, "args": None}))
        except OSError as err:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning("flow export to %s failed (%d so far): %s", self.path, self.errors, err)
            return
        self.written += 1

    def _event(self, time_ns: int | None, node_name: str) -> observer_pb2.ExportEvent:
        event = observer_pb2.ExportEvent(node_name=node_name or self.node_name)
        stamp = Timestamp()
        stamp.FromNanoseconds(time_ns if time_ns is not None else time.time_ns())
        event.time.CopyFrom(stamp)
        return event

    def on_flow(self, flow: flow_pb2.Flow) -> None:
        if not self._keep(flow):
            self.filtered += 1
            return
        event = self._event(
            flow.time.ToNanoseconds() if flow.HasField("time") else None, flow.node_name
        )
        if self._mask is not None:
            self._mask.MergeMessage(flow, event.flow)
        else:
            event.flow.CopyFrom(flow)
        self._write(event)

    def on_lost(self, lost: flow_pb2.LostEvent) -> None:
        event = self._event(None, "")
        event.lost_events.CopyFrom(lost)
        self._write(event)

    def on_agent_event(self, agent_event: flow_pb2.AgentEvent) -> None:
        event = self._event(None, "")
        event.agent_event.CopyFrom(agent_event)
        self._write(event)

    def flush(self) -> None:
        self._handler.flush()

    def close(self) -> None:
        self._handler.close()
