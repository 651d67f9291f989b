"""One error type for every policy document problem, each problem one line.

An import is all-or-nothing, and whoever wrote the policy has to fix it without guessing, so every
problem names the file, the document, the dotted path of the field and what was expected, on one
line, in the project's style (``policy.yaml: document 2 (CiliumNetworkPolicy shop/web):
spec.egress[0].toPorts[0].ports[0].endPort: must be >= port (80)``). :class:`PolicyError` carries
all of them; ``str()`` is the first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

__all__ = ["PolicyError", "format_path", "one_line", "show"]

PathPart = str | int


def one_line(text: str) -> str:
    """``text`` with every line break (and the blanks around it) folded into one space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


class PolicyError(Exception):
    """Policy documents that cannot be used. ``str()`` is the first problem, on one line.

    ``problems`` holds every problem found (one line each, the first equal to ``str(self)``), so a
    front end can show them all at once.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        lines = [problems] if isinstance(problems, str) else list(problems)
        if not lines:
            raise ValueError("PolicyError needs at least one problem")
        self.problems: list[str] = [one_line(p) for p in lines]
        super().__init__(self.problems[0])

    def __str__(self) -> str:
        return self.problems[0]


def show(value: object) -> str:
    """A short, one-line description of a YAML value for "got ..." in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"int {value}" if value.bit_length() <= 64 else "a very large int"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, set):
        return "a set"
    return f"{type(value).__name__} {one_line(str(value))[:40]}"


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(loc: Sequence[PathPart]) -> str:
    """``('spec', 'egress', 0, 'toPorts')`` -> ``spec.egress[0].toPorts``; odd keys quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)[:80]}]"
    return out
