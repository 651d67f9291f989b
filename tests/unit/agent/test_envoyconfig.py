"""HTTP rules → RBAC, the parts Envoy runs are checked in tests/integration/agent/test_envoy.py;
here the translation of upstream's rule fields that the integration test does not reach."""

from __future__ import annotations

from ciliary.agent import envoyconfig as cfg
from ciliary.policy.api.model import HTTPHeaderMatch, HTTPRule, Secret


def test_headers_follow_upstreams_get_http_rule() -> None:
    perm = cfg.rule_permission(HTTPRule(headers=("X-A: 1 2", "X-B 3", "X-C")))
    assert perm == {
        "and_rules": {
            "rules": [
                {"header": {"name": "X-A", "string_match": {"exact": "1 2"}}},
                {"header": {"name": "X-B", "string_match": {"exact": "3"}}},
                {"header": {"name": "X-C", "present_match": True}},
            ]
        }
    }


def test_header_matches_mismatch_actions_and_secrets() -> None:
    rule = HTTPRule(
        header_matches=(
            HTTPHeaderMatch("X-Log", "v", mismatch="LOG"),  # an action, no requirement
            HTTPHeaderMatch("X-Secret", secret=Secret("s", "ns")),  # unreadable: never
            HTTPHeaderMatch("X-Default", "d", secret=Secret("s")),  # the value is the fallback
        )
    )
    assert cfg.rule_permission(rule) == {
        "and_rules": {
            "rules": [
                {"not_rule": {"any": True}},
                {"header": {"name": "X-Default", "string_match": {"exact": "d"}}},
            ]
        }
    }
    assert cfg.rule_permission(HTTPRule()) == {"any": True}


def test_peers_without_addresses_allow_nothing_and_rules_none_allow_all() -> None:
    chain = cfg.HTTPChain(
        "c",
        "egress",
        ("10.0.0.1",),
        80,
        (
            cfg.PeerHTTPRules((), (HTTPRule(path="/"),)),  # selects no address: dropped
            cfg.PeerHTTPRules(("10.0.0.2/32", "fd00::2/128"), None),
        ),
    )
    policies = cfg.rbac(chain)["rules"]["policies"]
    assert list(policies) == ["peer-1"]
    assert policies["peer-1"] == {
        "permissions": [
            {
                "or_rules": {
                    "rules": [
                        {"destination_ip": {"address_prefix": "10.0.0.2", "prefix_len": 32}},
                        {"destination_ip": {"address_prefix": "fd00::2", "prefix_len": 128}},
                    ]
                }
            }
        ],
        "principals": [{"any": True}],
    }
