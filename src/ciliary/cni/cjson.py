"""JSON for the CNI plugins, without the import cost of the ``json`` package.

Why: ``import json`` compiles regular expressions at import (decoder and encoder), so it imports
``re``, and ``re`` imports ``enum``, ``functools`` and the regex compiler: ~9 ms of every plugin
exec on a 2-core node, where the interpreter's own start (``python -I -S``) is ~8 ms (measured
with ``python -I -S -c 'import json'`` against ``-c pass``). The work itself is done by ``_json``,
the C accelerator the ``json`` package runs underneath; this module calls it directly with the
settings ``json.dumps()`` and ``json.loads()`` use by default, so the text written and the input
accepted are the same.

Anything unusual falls back to ``json`` itself: bytes input, text that is not one JSON value
(``json`` then raises its own ``JSONDecodeError`` with its message), an interpreter without
``_json``. The ``json`` package is therefore imported only when something is already wrong.
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy reads it as true: ``typing`` is for the type checker only
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

try:
    import _json as _accel
except ImportError:  # pragma: no cover - not CPython: the json package does it all
    _accel = None  # type: ignore[assignment]

_WHITESPACE = " \t\n\r"  # JSON's (RFC 8259 "ws"), what json.decoder skips around a value


def _stdlib() -> ModuleType:
    import json  # noqa: PLC0415 - only the unusual cases pay for it

    return json


def _not_serializable(value: object) -> Any:
    """``json.JSONEncoder.default``: the same error for a value JSON has no form for."""
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


class _DecoderSettings:
    """What ``_json.make_scanner`` reads from a decoder: ``json.JSONDecoder()``'s defaults."""

    def __init__(self) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        constants = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
        self.parse_constant = constants.__getitem__


_scan = _accel.make_scanner(_DecoderSettings()) if _accel is not None else None  # type: ignore[arg-type]


def dumps(value: object) -> str:
    """``json.dumps(value)``: ASCII output, ``", "`` and ``": "`` separators, NaN allowed."""
    if _accel is None:  # pragma: no cover
        return str(_stdlib().dumps(value))
    encode = _accel.make_encoder(
        {},  # circular-reference markers: per call, as json.JSONEncoder.iterencode makes them
        _not_serializable,
        _accel.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        False,
        False,
        True,
    )
    return "".join(encode(value, 0))


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``: one JSON value, whitespace around it allowed; else ``json``'s own
    ``JSONDecodeError`` (a ``ValueError``)."""
    if _scan is None or not isinstance(text, str):
        return _stdlib().loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except Exception:  # json itself says where and why
        # StopIteration: no value where one should start. Any malformed text: the scanner's
        # error names ``json.decoder.JSONDecodeError``, which it finds in ``sys.modules`` only
        # (never imports), so without ``json`` loaded it fails with a bare SystemError.
        return _stdlib().loads(text)
    if end != len(text) and text[end:].strip(_WHITESPACE):
        return _stdlib().loads(text)  # "Extra data": json raises it
    return value
