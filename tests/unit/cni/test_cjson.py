"""The plugins' JSON (``ciliary.cni.cjson``) writes and reads exactly what ``json`` does, and
fails as ``json`` fails."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliary.cni import cjson

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equality with NaN equal to itself (NaN is a value json writes and reads)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(VALUES, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_the_same_text_and_values_as_json(value: Any, pad: str) -> None:
    text = cjson.dumps(value)
    assert text == json.dumps(value)
    assert same(cjson.loads(pad + text + pad), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        '{"a": 1} x',
        '{"a": 1}{}',
        '{"a":',
        "[1,]",
        "nul",
        "\ufeff{}",
        "{'a': 1}",
        "[1 2]",
    ],
)
def test_the_same_errors_as_json(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as ours:
        cjson.loads(text)
    assert (ours.value.msg, ours.value.pos) == (theirs.value.msg, theirs.value.pos)


def test_bytes_and_unwritable_values_as_json() -> None:
    assert cjson.loads(b'{"a": [1, "\\u00e9"]}') == {"a": [1, "\u00e9"]}
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        cjson.dumps({"a": object()})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        cjson.dumps(loop)
    assert cjson.dumps([1, {"b": None}]) == '[1, {"b": null}]'  # after a failed call, as new


def test_errors_in_a_process_that_never_imported_json() -> None:
    """As in a plugin exec: the C scanner's error needs ``json.decoder`` already loaded (it looks
    it up in ``sys.modules`` and otherwise fails with a bare SystemError)."""
    code = (
        "import sys\n"
        f"sys.path.append({str(Path(cjson.__file__).parents[2])!r})\n"
        "from ciliary.cni import cjson\n"
        "assert 'json' not in sys.modules\n"
        "for text in ('{not json', '[1, 2', '\"x'):\n"
        "    try:\n"
        "        cjson.loads(text)\n"
        "    except ValueError as err:\n"
        "        print(type(err).__name__, err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "JSONDecodeError Expecting property name enclosed in double quotes: line 1 column 2"
        " (char 1)",
        "JSONDecodeError Expecting ',' delimiter: line 1 column 6 (char 5)",
        "JSONDecodeError Unterminated string starting at: line 1 column 1 (char 0)",
    ]
