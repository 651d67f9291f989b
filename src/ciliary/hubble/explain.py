"""Where a default-deny drop's explanation travels in a Hubble flow: ``Flow.extensions``.

Upstream's fields keep upstream's meaning: ``{ingress,egress}_denied_by`` name *deny rules* that
matched, and a default-deny drop (reason 133) matched none, so they stay empty; ``policy_log`` is
the rules' ``log`` values and ``Summary`` the packet's summary. The answer to "which policy
dropped this?" for a default deny (the policies that selected the endpoint for that direction,
:class:`~ciliary.policy.explain.DefaultDeny`) goes into the field upstream reserves for
implementations' own data, ``extensions`` (a ``google.protobuf.Any``), as a well-known
``google.protobuf.Struct``, so every client decodes it without our .proto files (upstream's
``hubble observe -o json`` prints it)::

    "extensions": {"@type": "type.googleapis.com/google.protobuf.Struct",
      "ciliary.io/defaultDeny": {"endpoint": "shop/db", "direction": "ingress",
        "policies": [{"kind": "CiliumNetworkPolicy", "namespace": "shop", "name": "db-from-web"}],
        "explanation": "shop/db is selected for ingress by CiliumNetworkPolicy shop/db-from-web;
                        no rule of it allows this peer/port"}}
"""

from __future__ import annotations

from google.protobuf.any_pb2 import Any as AnyPB
from google.protobuf.struct_pb2 import Struct

from ciliary.hubble.api.flow import flow_pb2
from ciliary.policy.explain import DefaultDeny

__all__ = ["DEFAULT_DENY_KEY", "default_deny_extension", "default_deny_of"]

DEFAULT_DENY_KEY = "ciliary.io/defaultDeny"


def default_deny_extension(why: DefaultDeny) -> AnyPB:
    """``why`` as the value of ``Flow.extensions``."""
    body = Struct()
    body.update(
        {
            DEFAULT_DENY_KEY: {
                "endpoint": why.endpoint,
                "direction": why.direction,
                "policies": [
                    {"kind": p.kind, "namespace": p.namespace or "", "name": p.name}
                    for p in why.policies
                ],
                "explanation": why.text,
            }
        }
    )
    packed = AnyPB()
    packed.Pack(body)
    return packed


def default_deny_of(f: flow_pb2.Flow) -> tuple[str, list[str]] | None:
    """(explanation, policies as ``Kind ns/name``) of a flow's default deny, if it has one."""
    if not f.HasField("extensions") or not f.extensions.Is(Struct.DESCRIPTOR):
        return None
    body = Struct()
    f.extensions.Unpack(body)
    if DEFAULT_DENY_KEY not in body.fields:
        return None
    why = body.fields[DEFAULT_DENY_KEY].struct_value
    policies = []
    for value in why.fields["policies"].list_value.values:
        p = value.struct_value.fields
        ns, name = p["namespace"].string_value, p["name"].string_value
        policies.append(f"{p['kind'].string_value} {ns + '/' if ns else ''}{name}")
    return why.fields["explanation"].string_value, policies
