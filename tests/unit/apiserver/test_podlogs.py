"""The pure parts of ``pods/<name>/log``: the log path rule (one home, ``ciliary.k8s.podlogs``)
and where ``tailLines`` starts, with and without a final newline and across read blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciliary.apiserver import podlogs as served
from ciliary.k8s import podlogs


def test_layout_is_kubelets() -> None:
    path = podlogs.container_log_path(Path("/l"), "ns", "web", "u-1", "app", restart_count=2)
    assert path == Path("/l/ns_web_u-1/app/2.log")
    assert [podlogs.run_number(n) for n in ("2.log", "10.log", "x.log", "2.log.gz", "2")] == [
        2, 10, None, None, None,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="< 0"):
        podlogs.container_log_path(Path("/l"), "ns", "web", "u", "app", restart_count=-1)


@pytest.mark.parametrize(
    ("text", "lines", "expected"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"", 3, b""),
        (b"x" * 70000 + b"\n" + b"y" * 70000 + b"\n", 1, b"y" * 70000 + b"\n"),
    ],
)
def testtail_offset(tmp_path: Path, text: bytes, lines: int, expected: bytes) -> None:
    f = tmp_path / "0.log"
    f.write_bytes(text)
    assert text[served.tail_offset(f, lines) :] == expected
