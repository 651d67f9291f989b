"""Reading policy documents: YAML text (or documents already read) in, policies or one error out.

An import is all-or-nothing: every document of every kind is read and checked, every problem is
collected, and if there is any, :class:`~ciliary.policy.api.errors.PolicyError` is raised with all
of them; otherwise every document has become a :class:`~ciliary.policy.api.model.Policy`. Users'
YAML is taken unchanged, as ``kubectl apply`` would take it: several documents per file, each
``CiliumNetworkPolicy``, ``CiliumClusterwideNetworkPolicy`` (``cilium.io/v2``) or
``NetworkPolicy`` (``networking.k8s.io/v1``).

The YAML reader is PyYAML's safe loader, made strict about keys given twice in one mapping (as
``kubectl`` is); the lab reads its own files the same way and passes the policy documents it found
to :func:`parse_policy_documents`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from ciliary.core.yamldoc import YAMLDocumentError, load_documents
from ciliary.k8s.fields import error_message, format_path
from ciliary.policy.api import schema
from ciliary.policy.api.errors import PolicyError, show
from ciliary.policy.api.model import Policy, PolicyKind, Rule
from ciliary.policy.api.translate import Translator

__all__ = ["POLICY_KINDS", "api_object_document", "parse_policy_documents", "parse_policy_text"]

POLICY_KINDS: Final[dict[str, str]] = {
    "CiliumNetworkPolicy": "cilium.io/v2",
    "CiliumClusterwideNetworkPolicy": "cilium.io/v2",
    "NetworkPolicy": "networking.k8s.io/v1",
}
"""The kinds this package reads, with their apiVersion."""


# --------------------------------------------------------------------------------------------
# YAML


def load_yaml(text: str, filename: str) -> list[tuple[int, object]]:
    """The documents of a YAML stream as (1-based index, value), empty documents left out.

    Raises :class:`PolicyError` (one line, with the line and column) if the text is not YAML."""
    try:
        return load_documents(text, filename)
    except YAMLDocumentError as err:
        raise PolicyError(str(err)) from None


# --------------------------------------------------------------------------------------------
# Documents

_NAME_LIKE = re.compile(r"[\w.\-/]{1,80}")


def _name_text(value: str) -> str:
    return value if _NAME_LIKE.fullmatch(value) else show(value)


def describe(doc: Mapping[Any, Any]) -> str | None:
    """``CiliumNetworkPolicy shop/web``-like description of a raw document, from what it has."""
    kind = doc.get("kind")
    if not isinstance(kind, str):
        return None
    shown = _name_text(kind)
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str):
        return shown
    name = _name_text(name)
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    if kind == "CiliumClusterwideNetworkPolicy":
        return f"{shown} {name}"
    if isinstance(namespace, str):
        return f"{shown} {_name_text(namespace)}/{name}"
    return f"{shown} default/{name}"


def where(filename: str, index: int, doc: object) -> str:
    """``FILE: document N (Kind ns/name)``, the prefix of a one-line error about a document."""
    description = describe(doc) if isinstance(doc, Mapping) else None
    return f"{filename}: document {index}" + (f" ({description})" if description else "")


def _validate(
    model: type[schema.CiliumPolicyDocument] | type[schema.NetworkPolicyDocument],
    doc: Mapping[Any, Any],
    prefix: str,
) -> tuple[BaseModel | None, list[str]]:
    try:
        return model.model_validate(dict(doc)), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, message = error_message(err)
            path = format_path(loc)
            problems.append(f"{prefix}: {path}: {message}" if path else f"{prefix}: {message}")
        return None, problems
    except RecursionError:
        return None, [f"{prefix}: nested too deeply"]


def _parse_document(doc: object, filename: str, index: int) -> tuple[Policy | None, list[str]]:
    prefix = where(filename, index, doc)
    if not isinstance(doc, Mapping):
        return None, [
            f"{prefix}: expected a mapping (a policy with apiVersion, kind, metadata and spec),"
            f" got {show(doc)}"
        ]
    kind = doc.get("kind")
    if kind is None:
        return None, [f"{prefix}: kind: required field is missing"]
    if not isinstance(kind, str):
        return None, [f"{prefix}: kind: expected a string, got {show(kind)}"]
    if kind not in POLICY_KINDS:
        known = ", ".join(POLICY_KINDS)
        return None, [
            f"{prefix}: kind: {_name_text(kind)} is not a policy kind (expected one of {known})"
        ]
    expected = POLICY_KINDS[kind]
    api_version = doc.get("apiVersion")
    if api_version is None:
        return None, [f"{prefix}: apiVersion: required field is missing (expected {expected!r})"]
    if api_version != expected:
        return None, [
            f"{prefix}: apiVersion: expected {expected!r} for kind {kind}, got {show(api_version)}"
        ]
    model = schema.NetworkPolicyDocument if kind == "NetworkPolicy" else schema.CiliumPolicyDocument
    validated, problems = _validate(model, doc, prefix)
    if validated is None:
        return None, problems
    assert isinstance(validated, schema.CiliumPolicyDocument | schema.NetworkPolicyDocument)
    policy_kind: PolicyKind = (
        "NetworkPolicy"
        if kind == "NetworkPolicy"
        else "CiliumClusterwideNetworkPolicy"
        if kind == "CiliumClusterwideNetworkPolicy"
        else "CiliumNetworkPolicy"
    )
    meta = validated.metadata
    namespace = None if policy_kind == "CiliumClusterwideNetworkPolicy" else meta.namespace
    translator = Translator(policy_kind, namespace or _default_namespace(policy_kind), meta.name)
    translator.metadata(meta)
    rules: tuple[Rule, ...]
    if isinstance(validated, schema.NetworkPolicyDocument):
        rule = translator.network_policy_rule(validated.spec)
        rules = () if rule is None else (rule,)
    else:
        rules = translator.cilium_rules(validated)
    if translator.problems:
        return None, [f"{prefix}: {format_path(path)}: {msg}" for path, msg in translator.problems]
    return (
        Policy(
            kind=policy_kind,
            namespace=translator.namespace,
            name=meta.name,
            rules=rules,
            source=f"{filename}:{index}",
            labels=tuple(sorted(meta.labels.items())),
            annotations=tuple(sorted(meta.annotations.items())),
        ),
        [],
    )


def _default_namespace(kind: PolicyKind) -> str | None:
    return None if kind == "CiliumClusterwideNetworkPolicy" else "default"


def api_object_document(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A policy object as an API server stores it, back to the document its user wrote: no
    ``status``, and of the metadata only what users write (the server's ``uid``,
    ``resourceVersion``, ``managedFields``… are no policy fields)."""
    doc = {k: v for k, v in obj.items() if k != "status"}
    doc["metadata"] = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k in ("name", "namespace", "labels", "annotations")
    }
    return doc


def parse_policy_documents(docs: Sequence[tuple[int, object]], filename: str) -> list[Policy]:
    """Check and translate documents already read from ``filename``: ``(1-based index, value)``
    pairs, as the lab passes the policy documents of a lab file. Raises :class:`PolicyError` with
    every problem of every document, or returns one :class:`Policy` per document, in order."""
    problems: list[str] = []
    policies: list[Policy] = []
    first: dict[str, int] = {}
    for index, doc in docs:
        policy, doc_problems = _parse_document(doc, filename, index)
        problems.extend(doc_problems)
        if policy is None:
            continue
        if policy.key in first:
            problems.append(
                f"{where(filename, index, doc)}: metadata.name: duplicate policy"
                f" {policy.kind} {policy.display_name} (also document {first[policy.key]})"
            )
            continue
        first[policy.key] = index
        policies.append(policy)
    if problems:
        raise PolicyError(problems)
    return policies


def parse_policy_text(text: str, filename: str) -> list[Policy]:
    """Read, check and translate every policy document of a YAML text (``filename`` is only used
    in messages). Raises :class:`PolicyError` on any problem in any document, including a
    document that is not a policy, and on a text without documents."""
    docs = load_yaml(text, filename)
    if not docs:
        raise PolicyError(f"{filename}: the file has no documents (expected policy documents)")
    return parse_policy_documents(docs, filename)
