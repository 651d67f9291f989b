"""Protobuf request bodies as kubectl's typed create commands send them: the envelope, zero
fields skipped as JSON's omitempty would, Go pointer zeros kept, and a field with a value that
the tables do not know refused rather than dropped. Bodies are built here with protobuf's wire
rules (varint keys, length-delimited strings, messages and map entries)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.k8s.protobuf import MAGIC, UnsupportedProtobufError, decode


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def ld(number: int, payload: bytes | str) -> bytes:
    raw = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(raw)) + raw


def num(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def entry(number: int, key: str, value: bytes | str) -> bytes:
    return ld(number, ld(1, key) + ld(2, value))


def body(api_version: str, kind: str, raw: bytes) -> bytes:
    return MAGIC + ld(1, ld(1, api_version) + ld(2, kind)) + ld(2, raw) + ld(3, b"") + ld(4, b"")


# what Go writes for an ObjectMeta with only a name: every non-pointer field, zero
META_ZERO = ld(2, "") + ld(3, "") + ld(4, "") + ld(5, "") + ld(6, "") + num(7, 0) + ld(8, b"")


def test_namespace_with_zero_fields_is_its_name() -> None:
    raw = ld(1, ld(1, "t2") + META_ZERO) + ld(2, b"") + ld(3, ld(1, ""))
    assert decode(body("v1", "Namespace", raw)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "t2"},
    }


def test_configmap_maps_and_binary_data() -> None:
    raw = (
        ld(1, ld(1, "c1") + entry(11, "app", "x"))
        + entry(2, "a", "b")
        + entry(2, "z", "")
        + entry(3, "blob", b"\xff\xfe\x00")
    )
    assert decode(body("v1", "ConfigMap", raw)) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c1", "labels": {"app": "x"}},
        "data": {"a": "b", "z": ""},
        "binaryData": {"blob": "//4A"},
    }


def test_deployment_keeps_replicas_zero_and_reads_containers() -> None:
    container = ld(1, "c") + ld(2, "nginx") + ld(3, "sleep") + ld(3, "10") + ld(6, num(3, 8080))
    container += ld(8, b"") + ld(13, "") + num(16, 0)  # resources {}, "", stdin false
    template = ld(1, entry(11, "app", "d")) + ld(2, ld(2, container) + ld(3, "") + num(11, 0))
    spec = num(1, 0) + ld(2, entry(1, "app", "d")) + ld(3, template) + ld(4, b"")
    out = decode(body("apps/v1", "Deployment", ld(1, ld(1, "d")) + ld(2, spec) + ld(3, b"")))
    assert out["spec"] == {
        "replicas": 0,
        "selector": {"matchLabels": {"app": "d"}},
        "template": {
            "metadata": {"labels": {"app": "d"}},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "nginx",
                        "command": ["sleep", "10"],
                        "ports": [{"containerPort": 8080}],
                    }
                ]
            },
        },
    }


def test_service_ports_with_int_and_named_target_ports() -> None:
    port_int = ld(1, "80-8080") + ld(2, "TCP") + num(3, 80) + ld(4, num(1, 0) + num(2, 8080))
    port_name = ld(1, "53-dns") + num(3, 53) + ld(4, num(1, 1) + ld(3, "dns")) + num(5, 30053)
    spec = ld(1, port_int) + ld(1, port_name) + entry(2, "app", "s") + ld(4, "ClusterIP")
    out = decode(body("v1", "Service", ld(1, ld(1, "s")) + ld(2, spec)))
    assert out["spec"] == {
        "ports": [
            {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
            {"name": "53-dns", "port": 53, "targetPort": "dns", "nodePort": 30053},
        ],
        "selector": {"app": "s"},
        "type": "ClusterIP",
    }


def test_negative_numbers_are_twos_complement_varints() -> None:
    raw = ld(1, ld(1, "d")) + ld(2, num(1, -1))
    assert decode(body("apps/v1", "Deployment", raw))["spec"]["replicas"] == -1


def test_unknown_field_with_a_value_is_refused_not_dropped() -> None:
    # ServiceAccount.secrets (2) is not read here: empty it is skipped, with content refused
    assert decode(body("v1", "ServiceAccount", ld(1, ld(1, "sa")) + ld(2, ld(1, ""))))
    with pytest.raises(UnsupportedProtobufError, match="field 2 of ServiceAccount"):
        decode(body("v1", "ServiceAccount", ld(1, ld(1, "sa")) + ld(2, ld(1, "token"))))
    with pytest.raises(UnsupportedProtobufError, match="field 9 of ObjectMeta"):
        decode(body("v1", "ConfigMap", ld(1, ld(1, "c") + ld(9, num(1, 1700000000)))))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"kind":"Namespace"}', "magic"),
        (body("v1", "Secret", ld(1, ld(1, "s"))), "Secret"),
        (body("batch/v1", "Job", b""), "Job"),
        (MAGIC + ld(1, ld(1, "v1") + ld(2, "Namespace")) + ld(3, "gzip"), "encoding"),
        (body("v1", "Namespace", ld(1, ld(1, b"\xff"))), "UTF-8"),
        (MAGIC + b"\x0a\x05ab", "past the end"),
        (body("v1", "Namespace", ld(1, ld(8, num(1, 1 << 62)))), "no time"),
    ],
)
def test_bodies_not_read_here(data: bytes, why: str) -> None:
    with pytest.raises(UnsupportedProtobufError, match=why):
        decode(data)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused(tail: bytes) -> None:
    for data in (MAGIC + tail, body("v1", "ConfigMap", tail), body("apps/v1", "Deployment", tail)):
        try:
            out = decode(data)
        except UnsupportedProtobufError:
            continue
        assert isinstance(out, dict)
        assert out["kind"] in ("ConfigMap", "Deployment", "Namespace", "Service", "ServiceAccount")
