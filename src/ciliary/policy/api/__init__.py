"""The policy language: documents in, checked and normalized rules out.

Everything a front end or the engine needs from here is re-exported:

- :func:`parse_policy_text` (YAML text) and :func:`parse_policy_documents` (documents the lab
  already read) return one :class:`Policy` per document or raise :class:`PolicyError` listing
  every problem, each on one line (``FILE: document N (Kind ns/name): field.path: problem``);
- the normalized model (:class:`Policy`, :class:`Rule`, :class:`PeerRule`, :class:`PortRule`,
  :class:`PortProtocol`, :class:`CIDRRule`, :class:`ICMPField`, :class:`L7Rules`, ...);
- :class:`Selector` with :meth:`Selector.matches` over Cilium labels, and the label helpers
  (:class:`Label`, :class:`LabelSet`, :func:`parse_label`).

The modules say why they are shaped the way they are: :mod:`.schema` (the documents' shape),
:mod:`.translate` (Cilium's validation rules and translation), :mod:`.model`, :mod:`.selector`,
:mod:`.labels`, :mod:`.documents` (YAML and the all-or-nothing import).
"""

from ciliary.policy.api.documents import POLICY_KINDS, parse_policy_documents, parse_policy_text
from ciliary.policy.api.errors import PolicyError
from ciliary.policy.api.labels import Label, LabelSet, parse_label
from ciliary.policy.api.model import (
    ENTITIES,
    AWSGroup,
    CIDRRule,
    Entity,
    FQDNSelector,
    HTTPHeaderMatch,
    HTTPRule,
    ICMPField,
    KafkaRule,
    L7Rules,
    Listener,
    PeerRule,
    Policy,
    PolicyKind,
    PortProtocol,
    PortRule,
    Protocol,
    Rule,
    Secret,
    Service,
    TLSContext,
)
from ciliary.policy.api.selector import Requirement, Selector

__all__ = [
    "ENTITIES",
    "POLICY_KINDS",
    "AWSGroup",
    "CIDRRule",
    "Entity",
    "FQDNSelector",
    "HTTPHeaderMatch",
    "HTTPRule",
    "ICMPField",
    "KafkaRule",
    "L7Rules",
    "Label",
    "LabelSet",
    "Listener",
    "PeerRule",
    "Policy",
    "PolicyError",
    "PolicyKind",
    "PortProtocol",
    "PortRule",
    "Protocol",
    "Requirement",
    "Rule",
    "Secret",
    "Selector",
    "Service",
    "TLSContext",
    "parse_label",
    "parse_policy_documents",
    "parse_policy_text",
]
