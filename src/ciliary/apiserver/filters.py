"""``labelSelector`` and ``fieldSelector`` of list and watch requests, as one predicate.

Both grammars have one home in :mod:`ciliary.k8s` (label selectors, and field selectors with the
fields kube-apiserver lets each kind be selected by); this module only joins them and turns their
errors into 400 BadRequest, as kube-apiserver answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ciliary.apiserver import errors
from ciliary.k8s.fieldselector import (
    FieldSelectorError,
    object_fields,
    parse_field_selector,
    supported_fields,
)
from ciliary.k8s.labelselector import SelectorError, parse_selector
from ciliary.k8s.resources import ResourceType

Obj = dict[str, Any]


def predicate(
    rt: ResourceType, label_selector: str | None, field_selector: str | None
) -> Callable[[Obj], bool] | None:
    """The filter of a list/watch request (None: everything)."""
    matchers: list[Callable[[Obj], bool]] = []
    if label_selector:
        try:
            selector = parse_selector(label_selector)
        except SelectorError as err:
            raise errors.bad_request(f"unable to parse requirement: {err}") from None
        matchers.append(lambda o: selector.matches(o.get("metadata", {}).get("labels") or {}))
    if field_selector:
        try:
            fields = parse_field_selector(field_selector, supported_fields(rt.kind, rt.namespaced))
        except FieldSelectorError as err:
            raise errors.bad_request(str(err)) from None
        if not fields.is_everything:
            matchers.append(lambda o: fields.matches(object_fields(o, fields.fields)))
    if not matchers:
        return None
    return lambda o: all(m(o) for m in matchers)
