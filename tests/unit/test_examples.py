"""Every shipped example is valid (they are documentation users copy): a lab file (one with a
``Lab`` document) as ``ciliary lab up`` reads it; a manifest file (``kubectl apply -f`` against a
running lab, e.g. ``databases.yaml``) document by document with the API's own models, every
document of a kind the lab's control plane runs and every workload's selector matching its
template (what the API server would refuse)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ciliary.k8s.apps import Workload
from ciliary.k8s.objects import parse_object
from ciliary.lab import schema

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _documents(path: Path) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _is_lab_file(path: Path) -> bool:
    return any(d.get("kind") == "Lab" for d in _documents(path))


LAB_FILES = [p for p in EXAMPLES if _is_lab_file(p)]
MANIFESTS = [p for p in EXAMPLES if not _is_lab_file(p)]


@pytest.mark.parametrize("path", LAB_FILES, ids=[p.name for p in LAB_FILES])
def test_example_lab_files_parse(path: Path) -> None:
    lab = schema.load_lab_file(path)
    assert lab.pods, f"{path.name} has no pods"


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_example_manifests_parse(path: Path) -> None:
    docs = _documents(path)
    assert docs, f"{path.name} has no documents"
    for doc in docs:
        obj = parse_object(doc)  # ObjectError naming the object and field when invalid
        assert obj is not None, f"{path.name}: {doc.get('kind')} is not a kind the lab runs"
        if isinstance(obj, Workload):
            assert obj.selector_problem() is None, f"{path.name}: {obj.selector_problem()}"


def test_there_are_examples() -> None:
    assert LAB_FILES
    assert MANIFESTS
