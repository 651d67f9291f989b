"""Kubernetes' protobuf request bodies, read as the JSON objects they stand for.

kubectl's typed imperative commands (``kubectl create namespace|configmap|serviceaccount|
deployment|service``) build the object with client-go's generated clientsets, which send built-in
kinds as ``application/vnd.kubernetes.protobuf`` whatever the server's discovery says (observed
with kubectl v1.32.4: discovery and OpenAPI here never mention protobuf, and the client-go
feature-gate variables change nothing). ``kubectl apply/create -f`` and ``run`` send JSON. A
server that answers 415 makes those commands fail, so the few messages they send are read here.

Wire format (``k8s.io/apimachinery/pkg/runtime/serializer/protobuf``): the 4 bytes ``k8s\\0``,
then a ``runtime.Unknown`` (1: TypeMeta{1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding,
4: contentType) whose ``raw`` is the kind's message from ``k8s.io/api``'s ``generated.proto``.
Field numbers below are those files' (proto2: every field optional, maps as repeated key/value
entries).

Only fields these commands set are in the tables. Go's marshaller also writes every non-pointer
field at its zero value (``selfLink: ""``, ``hostNetwork: false``, ``resources: {}``), which is
what JSON's ``omitempty`` leaves out, so a field the tables do not know is skipped when it is
zero all the way down — and refused (:class:`UnsupportedProtobufError`, the caller's 415) when it
carries a value: nothing a client sent is ever dropped silently. Known zero fields are left out
too, except Go pointer fields (``replicas: 0`` is not ``replicas`` absent).

Signatures for the API server::

    decode(body: bytes) -> dict          # raises UnsupportedProtobufError
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["MAGIC", "MEDIA_TYPE", "UnsupportedProtobufError", "decode"]

MAGIC = b"k8s\x00"
MEDIA_TYPE = "application/vnd.kubernetes.protobuf"

Kind = Literal["string", "bool", "int", "msg", "map", "intstr", "time"]


class UnsupportedProtobufError(ValueError):
    """A body that is not protobuf, of a kind not read here, or with a field that carries a value
    the tables do not know."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: Kind
    msg: str = ""  # the message of a "msg" field
    repeated: bool = False
    pointer: bool = False  # a Go pointer: its zero value is a value
    map_bytes: bool = False  # map<string, bytes> (JSON: base64) instead of map<string, string>


def _f(name: str, kind: Kind, msg: str = "", **flags: bool) -> Field:
    return Field(name, kind, msg, **flags)


MESSAGES: dict[str, dict[int, Field]] = {
    "TypeMeta": {1: _f("apiVersion", "string"), 2: _f("kind", "string")},
    "ObjectMeta": {
        1: _f("name", "string"),
        2: _f("generateName", "string"),
        3: _f("namespace", "string"),
        7: _f("generation", "int"),
        8: _f("creationTimestamp", "time"),
        11: _f("labels", "map"),
        12: _f("annotations", "map"),
        14: _f("finalizers", "string", repeated=True),
    },
    "LabelSelector": {
        1: _f("matchLabels", "map"),
        2: _f("matchExpressions", "msg", "LabelSelectorRequirement", repeated=True),
    },
    "LabelSelectorRequirement": {
        1: _f("key", "string"),
        2: _f("operator", "string"),
        3: _f("values", "string", repeated=True),
    },
    # core/v1
    "Namespace": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("spec", "msg", "NamespaceSpec")},
    "NamespaceSpec": {1: _f("finalizers", "string", repeated=True)},
    "ConfigMap": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("data", "map"),
        3: _f("binaryData", "map", map_bytes=True),
        4: _f("immutable", "bool", pointer=True),
    },
    "ServiceAccount": {
        1: _f("metadata", "msg", "ObjectMeta"),
        4: _f("automountServiceAccountToken", "bool", pointer=True),
    },
    "Service": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("spec", "msg", "ServiceSpec")},
    "ServiceSpec": {
        1: _f("ports", "msg", "ServicePort", repeated=True),
        2: _f("selector", "map"),
        3: _f("clusterIP", "string"),
        4: _f("type", "string"),
        10: _f("externalName", "string"),
    },
    "ServicePort": {
        1: _f("name", "string"),
        2: _f("protocol", "string"),
        3: _f("port", "int"),
        4: _f("targetPort", "intstr"),
        5: _f("nodePort", "int"),
    },
    "PodTemplateSpec": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("spec", "msg", "PodSpec")},
    "PodSpec": {2: _f("containers", "msg", "Container", repeated=True)},
    "Container": {
        1: _f("name", "string"),
        2: _f("image", "string"),
        3: _f("command", "string", repeated=True),
        4: _f("args", "string", repeated=True),
        6: _f("ports", "msg", "ContainerPort", repeated=True),
    },
    "ContainerPort": {
        1: _f("name", "string"),
        3: _f("containerPort", "int"),
        4: _f("protocol", "string"),
    },
    # apps/v1
    "Deployment": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("spec", "msg", "DeploymentSpec")},
    "DeploymentSpec": {
        1: _f("replicas", "int", pointer=True),
        2: _f("selector", "msg", "LabelSelector"),
        3: _f("template", "msg", "PodTemplateSpec"),
        4: _f("strategy", "msg", "DeploymentStrategy"),
    },
    "DeploymentStrategy": {1: _f("type", "string")},
}

KINDS: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "Namespace",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "ServiceAccount"): "ServiceAccount",
    ("v1", "Service"): "Service",
    ("apps/v1", "Deployment"): "Deployment",
}
"""(apiVersion, kind) → the message read for it."""

_MAX_DEPTH = 32


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise UnsupportedProtobufError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) in order; varints as ints, the rest as bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise UnsupportedProtobufError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise UnsupportedProtobufError(f"wire type {wire} of field {number}")
        if pos > len(buf):
            raise UnsupportedProtobufError(f"field {number} runs past the end of its message")
        out.append((number, wire, value))
    return out


def _zero(wire: int, value: int | bytes, depth: int = 0) -> bool:
    """The value is a zero value all the way down (what JSON's omitempty leaves out)."""
    if isinstance(value, int):
        return value == 0
    if wire != 2:
        return not any(value)
    if not value:
        return True
    if depth >= _MAX_DEPTH:
        return False
    try:
        inner = _fields(value)
    except UnsupportedProtobufError:
        return False  # not a message: a string or bytes with content
    return all(_zero(w, v, depth + 1) for _, w, v in inner)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _map_entry(value: bytes, as_bytes: bool) -> tuple[str, Any]:
    key, item = "", b""
    for number, wire, v in _fields(value):
        if wire != 2 or not isinstance(v, bytes):
            raise UnsupportedProtobufError("a map entry that is not string → string/bytes")
        if number == 1:
            key = v.decode()
        elif number == 2:
            item = v
    return key, (base64.b64encode(item).decode() if as_bytes else item.decode())


def _scalar(field: Field, wire: int, value: int | bytes, path: str, depth: int) -> Any:
    kind = field.kind
    if kind == "string":
        if not isinstance(value, bytes) or wire != 2:
            raise UnsupportedProtobufError(f"{path}: expected a string")
        return value.decode()
    if kind in ("int", "bool"):
        if not isinstance(value, int):
            raise UnsupportedProtobufError(f"{path}: expected a varint")
        return bool(value) if kind == "bool" else _signed(value)
    if not isinstance(value, bytes):
        raise UnsupportedProtobufError(f"{path}: expected a message")
    if kind == "intstr":
        parts = {n: v for n, _, v in _fields(value)}
        if parts.get(1, 0) == 1:
            raw = parts.get(3, b"")
            return raw.decode() if isinstance(raw, bytes) else ""
        number = parts.get(2, 0)
        return _signed(number) if isinstance(number, int) else 0
    if kind == "time":
        seconds = next((v for n, _, v in _fields(value) if n == 1), 0)
        if not isinstance(seconds, int) or seconds == 0:
            return None
        try:
            moment = datetime.datetime.fromtimestamp(_signed(seconds), datetime.UTC)
        except (OverflowError, ValueError, OSError):
            raise UnsupportedProtobufError(f"{path}: {seconds} s is no time") from None
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return _message(field.msg, value, path, depth + 1)


def _message(name: str, buf: bytes, path: str, depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise UnsupportedProtobufError(f"{path}: nested too deep")
    table = MESSAGES[name]
    out: dict[str, Any] = {}
    for number, wire, value in _fields(buf):
        field = table.get(number)
        if field is None:
            if _zero(wire, value):
                continue
            raise UnsupportedProtobufError(
                f"{path}: field {number} of {name} is not read from protobuf here; send the"
                " object as JSON (kubectl apply -f / create -f)"
            )
        here = f"{path}.{field.name}"
        if field.kind == "map":
            if not isinstance(value, bytes):
                raise UnsupportedProtobufError(f"{here}: expected a map entry")
            key, item = _map_entry(value, field.map_bytes)
            out.setdefault(field.name, {})[key] = item
            continue
        item = _scalar(field, wire, value, here, depth)
        if field.repeated:
            out.setdefault(field.name, []).append(item)
        elif field.pointer or not (item in ("", 0, None, {}) or item is False):
            out[field.name] = item
    return out


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object a protobuf request body stands for (apiVersion and kind included)."""
    try:
        return _decode(body)
    except UnicodeDecodeError as err:
        raise UnsupportedProtobufError(f"a string field is not UTF-8: {err}") from None


def _decode(body: bytes) -> dict[str, Any]:
    if not body.startswith(MAGIC):
        raise UnsupportedProtobufError("the body does not start with the protobuf magic k8s\\0")
    type_meta: dict[str, Any] = {}
    raw = b""
    for number, wire, value in _fields(body[len(MAGIC) :]):  # runtime.Unknown
        if wire != 2 or not isinstance(value, bytes):
            raise UnsupportedProtobufError(f"field {number} of the envelope is not bytes")
        if number == 1:
            type_meta = _message("TypeMeta", value, "typeMeta")
        elif number == 2:
            raw = value
        elif number == 3 and value:
            raise UnsupportedProtobufError(f"content encoding {value.decode()!r}")
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    name = KINDS.get((api_version, kind))
    if name is None:
        raise UnsupportedProtobufError(
            f"{kind or 'an object'} ({api_version or 'no apiVersion'}) is not read from protobuf"
            " here; send it as JSON (kubectl apply -f / create -f)"
        )
    return {"apiVersion": api_version, "kind": kind, **_message(name, raw, kind)}
