"""YAML as users' Kubernetes tooling reads it: the safe loader, but a key given twice in a mapping
is an error (as kubectl makes it), and impossible scalars (a date like 2024-13-45) are reported with
their position; plus the one-line value descriptions every "got ..." message uses.

Shared by every parser of user files (lab files, policies) so they reject the same things the same
way.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml


class YAMLDocumentError(ValueError):
    """The text is not (acceptable) YAML; ``str()`` is one line naming file, line and column."""


def one_line(text: str) -> str:
    """``text`` with every line break (and the blanks around it) folded into one space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


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


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in a mapping is an error (as in kubectl)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            tag = str(node.tag).rpartition(":")[2]
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid {tag} {show(node.value)}: {exc}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[tuple[type, Hashable], yaml.Mark] = {}
        for key_node, _ in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                continue
            key = self.construct_object(key_node)
            try:
                marker = (type(key), key)
                duplicate = marker in seen
            except TypeError:
                continue
            if duplicate:
                first = seen[marker]
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {show(key)} (first given on line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[marker] = key_node.start_mark
        return super().construct_mapping(node, deep)


def load_documents(text: str, filename: str) -> list[tuple[int, object]]:
    """The documents of a YAML stream as (1-based index, value), empty documents left out.

    Raises :class:`YAMLDocumentError` (one line: file, line and column) if the text is not YAML;
    each parser turns it into its own error type."""
    docs: list[tuple[int, object]] = []
    index = 0
    try:
        for doc in yaml.load_all(text, Loader=StrictLoader):
            index += 1
            if doc is not None:
                docs.append((index, doc))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and exc.context_mark is not None:
            cm = exc.context_mark
            problem += f" ({exc.context} at line {cm.line + 1} column {cm.column + 1})"
        if mark is None:
            raise YAMLDocumentError(f"{filename}: invalid YAML: {problem}") from None
        raise YAMLDocumentError(
            f"{filename}: line {mark.line + 1} column {mark.column + 1}: {problem}"
        ) from None
    except yaml.reader.ReaderError as exc:
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise YAMLDocumentError(
            f"{filename}: line {line} column {column}: unacceptable character {char}: {exc.reason}"
        ) from None
    except yaml.YAMLError as exc:
        raise YAMLDocumentError(f"{filename}: invalid YAML: {exc}") from None
    except RecursionError:
        raise YAMLDocumentError(
            f"{filename}: document {index + 1}: YAML nested too deeply"
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise YAMLDocumentError(
            f"{filename}: document {index + 1}: invalid YAML value: {exc}"
        ) from None
    return docs
