"""Every shipped example lab file is valid (they are documentation users copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciliary.lab import schema

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_lab_files_parse(path: Path) -> None:
    lab = schema.load_lab_file(path)
    assert lab.pods, f"{path.name} has no pods"


def test_there_are_examples() -> None:
    assert EXAMPLES
