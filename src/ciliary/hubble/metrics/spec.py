"""``--hubble-metrics`` text → metric specs, validated against upstream's metric names and options.

Metrics are separated by spaces or commas (as upstream's flag and Helm list); a metric's options
follow ``:`` and are separated by ``;``. A comma inside an option value (``labelsContext=a,b``)
stays in that value: a comma starts a new metric only when a known metric name follows it.
An unknown metric or option is an error (upstream silently ignores unknown options).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ciliary.hubble.metrics.context import CONTEXT_KEYS

_CONTEXT_OPTION_KEYS = frozenset({*CONTEXT_KEYS, "labelscontext"})
# metric name → its own option keys (lower case) besides the context options
METRIC_OPTIONS: dict[str, frozenset[str]] = {
    "flow": frozenset(),
    "drop": frozenset(),
    "tcp": frozenset(),
    "port-distribution": frozenset(),
    "icmp": frozenset(),
    "policy": frozenset(),
    "flows-to-world": frozenset({"any-drop", "port", "syn-only"}),
    "dns": frozenset({"query", "ignoreaaaa"}),
    "http": frozenset({"exemplars"}),
    "httpV2": frozenset({"exemplars"}),
    "kafka": frozenset(),
}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    options: dict[str, str] = field(default_factory=dict)


def _split_metrics(spec: str) -> list[str]:
    out: list[str] = []
    for token in spec.split():
        for piece in token.split(","):
            name = piece.split(":", 1)[0]
            if name in METRIC_OPTIONS or not out or not piece:
                out.append(piece)
            else:  # a comma inside an option value (labelsContext=a,b)
                out[-1] += "," + piece
    return [p for p in out if p]


def parse_metrics_spec(spec: str | Sequence[str]) -> list[MetricSpec]:
    """``--hubble-metrics`` text (or a list of its items) → metric specs; ValueError if invalid."""
    text = spec if isinstance(spec, str) else " ".join(spec)
    specs: list[MetricSpec] = []
    for item in _split_metrics(text):
        name, _, opts = item.partition(":")
        if name not in METRIC_OPTIONS:
            raise ValueError(
                f"unknown Hubble metric {name!r} in {item!r} (expected one of: "
                f"{', '.join(METRIC_OPTIONS)})"
            )
        if any(s.name == name for s in specs):
            raise ValueError(f"Hubble metric {name!r} is given twice")
        options: dict[str, str] = {}
        for opt in opts.split(";"):
            if not opt:
                continue
            key, _, value = opt.partition("=")
            if key.lower() not in _CONTEXT_OPTION_KEYS | METRIC_OPTIONS[name]:
                own = sorted(METRIC_OPTIONS[name])
                raise ValueError(
                    f"metric {name!r}: unknown option {key!r} (expected "
                    f"{', '.join([*own, 'sourceContext', 'destinationContext', 'labelsContext'])}"
                    " or their Egress/Ingress variants)"
                )
            options[key] = value
        specs.append(MetricSpec(name, options))
    names = {s.name for s in specs}
    if {"http", "httpV2"} <= names:
        raise ValueError("Hubble metrics 'http' and 'httpV2' cannot be enabled together")
    return specs
