"""The HTTP rules of CNP/CCNP compiled to stock Envoy configuration (sans-IO: values in, dicts out).

Cilium runs its own Envoy build whose ``cilium.l7policy`` filter asks the agent's policy per
request. Stock Envoy has no such filter, so the same decisions are expressed with what it has
(wave2-facts §A.4):

- one **listener** per proxy port (``cilium-http-ingress``/``-egress``…), ``transparent: true``
  with the ``original_dst`` listener filter: the datapath hands a pod's connection to its socket
  keeping the original destination as the accepted socket's local address;
- one **filter chain** per (endpoint, port, direction), matched on that original destination
  (ingress: the endpoint's addresses and the port) or on the source (egress: the endpoint's
  addresses) and the destination port; a connection no chain matches is closed (fail closed);
- in each chain an HTTP connection manager (HTTP/1.1 and h2c by ``codec_type: AUTO``) whose route
  configuration comes by **RDS from its own file**, carrying the chain's **RBAC** as the route's
  per-filter config: a policy change rewrites that file only, which Envoy applies to the next
  request of every open connection (no listener change, no drain);
- the upstream is the **original destination** (``ORIGINAL_DST`` cluster per direction), with the
  downstream's HTTP version;
- a request RBAC denies gets Cilium's answer: 403 with body ``Access denied\\r\\n``
  (``local_reply_config``); a gRPC request gets Envoy's gRPC form of it, ``grpc-status: 7``
  (PERMISSION_DENIED), as upstream's proxy;
- every request is written as one line to the access log (:mod:`.accesslog` reads it): its
  fields in a fixed order, separated by ``ACCESS_LOG_SEPARATOR``, a byte no HTTP field can hold.

HTTP rule semantics are upstream's ``pkg/envoy/server.go`` ``getHTTPRule``: ``path`` matches the
``:path`` header (query included), ``method`` ``:method``, ``host`` ``:authority``, each a regex
that must match the whole value (RE2 full match); ``headers`` entries are ``Name`` (present) or
``Name: value`` / ``Name value`` (exact); ``headerMatches`` without a ``mismatch`` action require
the exact value (or presence when it has none); one whose secret cannot be read never matches
(we read no secrets: fail closed, as upstream without its secret and value); one with a mismatch
action (LOG/ADD/DELETE/REPLACE) decides nothing, as upstream (the action itself is not applied).
All fields of one rule must match; any rule of a peer allows. A peer whose entry has no HTTP
rules (an L3/L4 rule on the same port, or ``http: []``) may send every request; a peer set with no
known address allows nothing (upstream discards a selector with no selections).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Final, Literal

from ciliary.policy.api.model import HTTPRule

Direction = Literal["ingress", "egress"]
JSON = dict[str, Any]

ACCESS_DENIED_BODY: Final = "Access denied\r\n"
"""Cilium's proxy body for a denied HTTP request (with 403, content-type text/plain)."""
CLUSTER: Final[dict[Direction, str]] = {"ingress": "ingress-cluster", "egress": "egress-cluster"}
"""Upstream's names of the original-destination clusters."""
RBAC_FILTER: Final = "envoy.filters.http.rbac"
SO_MARK: Final = 36
SOL_SOCKET: Final = 1
CONNECT_TIMEOUT_S: Final = 2
_T = "type.googleapis.com/"
ACCESS_LOG_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("start_time", "%START_TIME(%s.%6f)%"),
    ("chain", "%FILTER_CHAIN_NAME%"),
    ("source", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("destination", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("method", "%REQ(:METHOD)%"),
    ("protocol", "%PROTOCOL%"),
    ("code", "%RESPONSE_CODE%"),
    ("duration_us", "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%"),
    ("grpc_status", "%GRPC_STATUS_NUMBER%"),
    ("details", "%RESPONSE_CODE_DETAILS%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("path", "%REQ(:PATH)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
)
"""One access log line per request: these fields (name, Envoy's command; ``-`` when absent) in
this order. A text line, not JSON: splitting it costs a fraction of decoding a JSON object, and
the agent reads one per request (#15's keep-alive benchmark: thousands a second)."""
ACCESS_LOG_SEPARATOR: Final = "\x1f"
"""ASCII's unit separator: a control character no header value, path or authority can hold
(Envoy's codecs refuse them), so a field never contains it; a line with another number of
fields is refused by the reader."""
ACCESS_LOG_FORMAT: Final = ACCESS_LOG_SEPARATOR.join(cmd for _, cmd in ACCESS_LOG_FIELDS) + "\n"
"""Envoy's text format of the access log (``text_format_source``)."""


@dataclass(frozen=True, slots=True)
class PeerHTTPRules:
    """What one set of peers may send: ``prefixes`` their addresses (None: every peer),
    ``rules`` the HTTP rules (None: every request)."""

    prefixes: tuple[str, ...] | None
    rules: tuple[HTTPRule, ...] | None


@dataclass(frozen=True, slots=True)
class HTTPChain:
    """The HTTP policy of one (endpoint, port, direction): a filter chain of its listener."""

    name: str
    direction: Direction
    endpoint_addresses: tuple[str, ...]
    port: int
    peers: tuple[PeerHTTPRules, ...]


@dataclass(frozen=True, slots=True)
class ProxyListener:
    """One proxy port of the node and the chains it serves."""

    name: str
    port: int
    direction: Direction
    chains: tuple[HTTPChain, ...]
    original_source_mark: int | None = None
    """Set: the upstream connections leave from the client's address (``original_src``: a
    transparent socket bound to it, a port of Envoy's own) with this SO_MARK, by which the
    datapath hands their replies back to Envoy (``bpf/lib/proxy.h`` ``proxy_sent``): the
    destination sees the pod, not the node. None: from the node's own address."""


# ---- RBAC --------------------------------------------------------------------------------


def _regex_header(name: str, regex: str) -> JSON:
    return {"name": name, "string_match": {"safe_regex": {"regex": regex}}}


def _exact_header(name: str, value: str) -> JSON:
    return {"name": name, "string_match": {"exact": value}}


def _present_header(name: str) -> JSON:
    return {"name": name, "present_match": True}


_NEVER: Final[JSON] = {"not_rule": {"any": True}}


def rule_permission(rule: HTTPRule) -> JSON:
    """One HTTP rule as an RBAC permission: every field of it must match."""
    parts: list[JSON] = []
    for header, regex in (
        (":path", rule.path),
        (":method", rule.method),
        (":authority", rule.host),
    ):
        if regex:
            parts.append({"header": _regex_header(header, regex)})
    for text in rule.headers:
        name, sep, value = text.partition(" ")
        if sep:
            parts.append({"header": _exact_header(name.rstrip(":"), value)})
        else:
            parts.append({"header": _present_header(name)})
    for match in rule.header_matches:
        if match.mismatch is not None:
            continue  # a mismatch action, not a requirement (upstream)
        if match.secret is not None and not match.value:
            parts.append(_NEVER)  # the secret's value is not known here: never matches
        elif match.value:
            parts.append({"header": _exact_header(match.name, match.value)})
        else:
            parts.append({"header": _present_header(match.name)})
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def _cidr(prefix: str) -> JSON:
    net = ip_network(prefix, strict=False)
    return {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen}


def _peer_policy(direction: Direction, peer: PeerHTTPRules) -> JSON | None:
    """The RBAC policy of one peer entry; None when it can allow nothing."""
    if peer.prefixes is not None and not peer.prefixes:
        return None
    if peer.rules is None:
        request: JSON = {"any": True}
    else:
        perms = [rule_permission(r) for r in peer.rules]
        if not perms:  # an allow-all HTTP rule list (``http: []``) is handled as None by callers
            return None
        request = perms[0] if len(perms) == 1 else {"or_rules": {"rules": perms}}
    principal: JSON = {"any": True}
    if peer.prefixes is not None:
        if direction == "ingress":  # the peer is the client
            ids = [{"direct_remote_ip": _cidr(p)} for p in peer.prefixes]
            principal = ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}
        else:  # the peer is the server: the original destination
            dests = [{"destination_ip": _cidr(p)} for p in peer.prefixes]
            where = dests[0] if len(dests) == 1 else {"or_rules": {"rules": dests}}
            request = (
                where if request == {"any": True} else {"and_rules": {"rules": [where, request]}}
            )
    return {"permissions": [request], "principals": [principal]}


def rbac(chain: HTTPChain) -> JSON:
    """The chain's RBAC: ALLOW with one policy per peer entry (none: every request denied)."""
    policies: dict[str, JSON] = {}
    for i, peer in enumerate(chain.peers):
        policy = _peer_policy(chain.direction, peer)
        if policy is not None:
            policies[f"peer-{i}"] = policy
    return {"rules": {"action": "ALLOW", "policies": policies}}


# ---- resources ---------------------------------------------------------------------------


def route_configuration(chain: HTTPChain) -> JSON:
    """The chain's RDS resource: every request to the original destination, under its RBAC."""
    return {
        "@type": _T + "envoy.config.route.v3.RouteConfiguration",
        "name": chain.name,
        "virtual_hosts": [
            {
                "name": chain.name,
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {"cluster": CLUSTER[chain.direction], "timeout": "0s"},
                    }
                ],
                "typed_per_filter_config": {
                    RBAC_FILTER: {
                        "@type": _T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                        "rbac": rbac(chain),
                    }
                },
            }
        ],
    }


def _path_source(path: Path) -> JSON:
    return {
        "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
        "resource_api_version": "V3",
    }


def _connection_manager(chain: HTTPChain, routes_path: Path, access_log: Path) -> JSON:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _T
            + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": chain.name,
            "codec_type": "AUTO",
            "rds": {"route_config_name": chain.name, "config_source": _path_source(routes_path)},
            "http_filters": [
                {
                    # no rules here: each route carries the chain's (RBACPerRoute)
                    "name": RBAC_FILTER,
                    "typed_config": {"@type": _T + "envoy.extensions.filters.http.rbac.v3.RBAC"},
                },
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": _T + "envoy.extensions.filters.http.router.v3.Router"
                    },
                },
            ],
            "local_reply_config": {
                "mappers": [
                    {
                        # local replies only (Envoy's own answers): a 403 is RBAC's
                        "filter": {
                            "status_code_filter": {
                                "comparison": {
                                    "op": "EQ",
                                    "value": {"default_value": 403, "runtime_key": "ciliary_403"},
                                }
                            }
                        },
                        "body": {"inline_string": ACCESS_DENIED_BODY},
                    }
                ]
            },
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": str(access_log),
                        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                    },
                }
            ],
        },
    }


def _chain_match(chain: HTTPChain) -> JSON:
    ranges = [_cidr(a) for a in chain.endpoint_addresses]
    where = "prefix_ranges" if chain.direction == "ingress" else "source_prefix_ranges"
    return {"destination_port": chain.port, where: ranges}


def listener(
    proxy: ProxyListener,
    routes_dir: Path,
    access_log: Path,
    *,
    ipv6: bool = False,
) -> JSON:
    """The LDS resource of one proxy port (IPv4 socket, and an IPv6-only one with ``ipv6``)."""
    original_source_mark = proxy.original_source_mark
    out: JSON = {
        "@type": _T + "envoy.config.listener.v3.Listener",
        "name": proxy.name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": proxy.port}},
        "transparent": True,
        "listener_filters": [
            {
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {
                    "@type": _T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
                },
            },
            *(
                []
                if original_source_mark is None
                else [
                    {
                        "name": "envoy.filters.listener.original_src",
                        "typed_config": {
                            "@type": _T
                            + "envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
                            "mark": original_source_mark,
                        },
                    }
                ]
            ),
        ],
        "filter_chains": [
            {
                "name": chain.name,
                "filter_chain_match": _chain_match(chain),
                "filters": [
                    _connection_manager(chain, routes_path(routes_dir, chain.name), access_log)
                ],
            }
            for chain in proxy.chains
            if chain.endpoint_addresses
        ],
    }
    if ipv6:
        out["additional_addresses"] = [
            {"address": {"socket_address": {"address": "::", "port_value": proxy.port}}}
        ]
    return out


def routes_path(routes_dir: Path, chain_name: str) -> Path:
    """Each chain's RDS file (one resource per file: filesystem RDS delivers the whole file)."""
    return routes_dir / f"{chain_name}.json"


def cluster(direction: Direction, mark: int | None = None) -> JSON:
    """The original-destination cluster of a direction; ``mark`` sets SO_MARK on its upstream
    connections (how the datapath tells the proxy's own packets)."""
    out: JSON = {
        "@type": _T + "envoy.config.cluster.v3.Cluster",
        "name": CLUSTER[direction],
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": f"{CONNECT_TIMEOUT_S}s",
        "cleanup_interval": f"{CONNECT_TIMEOUT_S + 0.5}s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": {},
            }
        },
    }
    if mark is not None:
        out["upstream_bind_config"] = {
            "source_address": {"address": "0.0.0.0", "port_value": 0},
            "socket_options": [
                {
                    "level": SOL_SOCKET,
                    "name": SO_MARK,
                    "int_value": mark,
                    "state": "STATE_PREBIND",
                }
            ],
        }
    return out


def discovery_response(version: str, resources: Sequence[JSON]) -> JSON:
    """A file of filesystem xDS: a DiscoveryResponse with the resources."""
    return {"version_info": version, "resources": list(resources)}


def bootstrap(node: str, lds: Path, cds: Path, admin_socket: Path) -> JSON:
    """Envoy's bootstrap: listeners and clusters from files, admin on a unix socket."""
    return {
        "node": {"id": node, "cluster": "ciliary"},
        "admin": {"address": {"pipe": {"path": str(admin_socket), "mode": 0o600}}},
        "dynamic_resources": {"lds_config": _path_source(lds), "cds_config": _path_source(cds)},
    }
