"""What the API server does to a Service on create and update: kube-apiserver's service registry.

Upstream (pkg/apis/core/v1/defaults.go, pkg/apis/core/validation, pkg/registry/core/service)
defaults a Service (``type`` ClusterIP, port ``protocol`` TCP, ``targetPort`` = ``port``,
``sessionAffinity`` None, traffic policies Cluster, ``allocateLoadBalancerNodePorts`` true for a
LoadBalancer), keeps ``clusterIP`` and ``clusterIPs`` in step, validates the ports and the
cluster IP fields, settles ``ipFamilyPolicy``/``ipFamilies`` against the cluster's service
ranges, then allocates what the Service's type needs: one cluster IP per family (none for
ExternalName or headless ``None``), a node port per port of a NodePort/LoadBalancer Service
(unless ``allocateLoadBalancerNodePorts: false``), a ``healthCheckNodePort`` for a LoadBalancer
with ``externalTrafficPolicy: Local``. On update what was allocated is carried over when the
client leaves it out (so ``kubectl apply``/``replace`` of a manifest without it keeps it), a
cluster IP may not change (except to and from ExternalName), and what the new type no longer
needs is dropped, which releases it. The choosing itself, and why two Services never get the same
address, is :mod:`ciliary.apiserver.servicealloc`'s.

Every refusal is 422 Invalid with upstream's field paths and words; a full range is 500, as
upstream answers it.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from ciliary.apiserver import errors
from ciliary.apiserver.errors import Cause
from ciliary.apiserver.servicealloc import (
    IP_PREFIX,
    PORT_PREFIX,
    AllocationError,
    RangeFullError,
    ServiceAllocator,
    Session,
    family_of,
)
from ciliary.k8s.names import is_dns1123_label, is_dns1123_subdomain, is_port_name
from ciliary.k8s.resources import by_path

Obj = dict[str, Any]
SERVICES_RT = by_path("", "v1", "services")
TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
PROTOCOLS = ("SCTP", "TCP", "UDP")
POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
FAMILIES = ("IPv4", "IPv6")
NONE = "None"


def _supported(value: Any, values: tuple[str, ...]) -> str:
    listed = ", ".join(f'"{v}"' for v in values)
    return f'Unsupported value: "{value}": supported values: {listed}'


def _spec(svc: Obj) -> Obj:
    spec = svc.get("spec")
    if spec is None:
        spec = svc["spec"] = {}
    return spec


def _ports(spec: Obj) -> list[Obj]:
    ports = spec.get("ports")
    return [p for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []


def needs_cluster_ip(spec: Obj) -> bool:
    return spec.get("type") != "ExternalName"


def needs_node_ports(spec: Obj) -> bool:
    return spec.get("type") in ("NodePort", "LoadBalancer")


def needs_health_check(spec: Obj) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def is_headless(spec: Obj) -> bool:
    ips = spec.get("clusterIPs") or []
    return spec.get("clusterIP") == NONE or (bool(ips) and ips[0] == NONE)


# ------------------------------------------------------------------------------- defaults


def set_defaults(svc: Obj) -> None:
    """kube's v1 defaults of a Service (SetDefaults_Service, SetDefaults_ServicePort)."""
    spec = _spec(svc)
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "ClientIP":
        cfg = spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {})
        if isinstance(cfg, dict):
            cfg.setdefault("timeoutSeconds", 10800)
    for port in _ports(spec):
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if needs_node_ports(spec) and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if needs_cluster_ip(spec) and not spec.get("internalTrafficPolicy"):
        spec["internalTrafficPolicy"] = "Cluster"
    if spec["type"] == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def normalize_cluster_ips(old: Obj | None, svc: Obj) -> None:
    """``clusterIP`` and ``clusterIPs[0]`` say the same (upstream's NormalizeClusterIPs): a
    client may set either; on update a changed ``clusterIP`` with unchanged ``clusterIPs``
    replaces them."""
    spec = _spec(svc)
    ip = spec.get("clusterIP") or ""
    ips = spec.get("clusterIPs") or []
    if old is not None:
        ospec = old.get("spec") or {}
        if (ospec.get("clusterIP") or "") != ip and (ospec.get("clusterIPs") or []) == ips:
            ips = [ip] if ip else []
    if ip and not ips:
        ips = [ip]
    elif ips and not ip and isinstance(ips, list) and isinstance(ips[0], str):
        ip = ips[0]
    if ip:
        spec["clusterIP"] = ip
    else:
        spec.pop("clusterIP", None)
    if ips:
        spec["clusterIPs"] = ips
    else:
        spec.pop("clusterIPs", None)


def carry_allocated(old: Obj, svc: Obj) -> None:
    """What was allocated stays when the client leaves it out (upstream's
    patchAllocatedValues): cluster IPs, node ports (by port name), the health check node port."""
    ospec, spec = old.get("spec") or {}, _spec(svc)
    if needs_cluster_ip(ospec) and needs_cluster_ip(spec):
        if not spec.get("clusterIP") and ospec.get("clusterIP"):
            spec["clusterIP"] = ospec["clusterIP"]
        if not spec.get("clusterIPs") and ospec.get("clusterIPs"):
            spec["clusterIPs"] = list(ospec["clusterIPs"])
    if needs_node_ports(ospec) and needs_node_ports(spec):
        by_name = {p.get("name") or "": p.get("nodePort") for p in _ports(ospec)}
        for port in _ports(spec):
            if not port.get("nodePort"):
                old_port = by_name.get(port.get("name") or "")
                used = {p.get("nodePort") for p in _ports(spec)}
                if old_port and old_port not in used:
                    port["nodePort"] = old_port
    if (
        needs_health_check(ospec)
        and needs_health_check(spec)
        and not spec.get("healthCheckNodePort")
        and ospec.get("healthCheckNodePort")
    ):
        spec["healthCheckNodePort"] = ospec["healthCheckNodePort"]


def drop_type_dependent(old: Obj, svc: Obj) -> None:
    """Fields the new type does not use are dropped when the client left them as they were
    (upstream's dropTypeDependentFields): a change to ExternalName drops the cluster IPs and
    families, a change away from NodePort/LoadBalancer the node ports — which releases them."""
    ospec, spec = old.get("spec") or {}, _spec(svc)

    def same(key: str) -> bool:
        return ospec.get(key) == spec.get(key)

    if needs_cluster_ip(ospec) and not needs_cluster_ip(spec):
        if same("clusterIP") and same("clusterIPs"):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        for key in ("ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
            if same(key):
                spec.pop(key, None)
    if needs_node_ports(ospec) and not needs_node_ports(spec):
        if [p.get("nodePort") for p in _ports(ospec)] == [p.get("nodePort") for p in _ports(spec)]:
            for port in _ports(spec):
                port.pop("nodePort", None)
        if same("externalTrafficPolicy"):
            spec.pop("externalTrafficPolicy", None)
    if needs_health_check(ospec) and not needs_health_check(spec) and same("healthCheckNodePort"):
        spec.pop("healthCheckNodePort", None)
    if spec.get("type") != "LoadBalancer" and same("allocateLoadBalancerNodePorts"):
        spec.pop("allocateLoadBalancerNodePorts", None)


# ------------------------------------------------------------------------------ validation


def _port_causes(spec: Obj) -> list[Cause]:
    causes: list[Cause] = []
    ports = spec.get("ports")
    if ports is not None and not isinstance(ports, list):
        return [Cause("spec.ports", "Invalid value: expected a list of ports")]
    ports = ports or []
    if not ports and needs_cluster_ip(spec) and not is_headless(spec):
        causes.append(Cause("spec.ports", "Required value", "FieldValueRequired"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        at = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            causes.append(Cause(at, "Invalid value: expected an object"))
            continue
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            causes.append(Cause(f"{at}.name", "Required value", "FieldValueRequired"))
        elif name and not (isinstance(name, str) and is_dns1123_label(name)):
            causes.append(
                Cause(
                    f"{at}.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower'
                    " case alphanumeric characters or '-', and must start and end with an"
                    " alphanumeric character",
                )
            )
        if name and name in names:
            causes.append(Cause(f"{at}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate"))
        names.add(str(name))
        number = port.get("port")
        if not _is_port(number):
            causes.append(
                Cause(
                    f"{at}.port", f"Invalid value: {number}: must be between 1 and 65535, inclusive"
                )
            )
        protocol = port.get("protocol")
        if protocol not in PROTOCOLS:
            causes.append(
                Cause(f"{at}.protocol", _supported(protocol, PROTOCOLS), "FieldValueNotSupported")
            )
        if (number, protocol) in seen:
            causes.append(Cause(at, f"Duplicate value: {number}/{protocol}", "FieldValueDuplicate"))
        seen.add((number, protocol))
        target = port.get("targetPort")
        if isinstance(target, str):
            if not is_port_name(target):
                causes.append(
                    Cause(
                        f"{at}.targetPort",
                        f'Invalid value: "{target}": must be a port number between 1 and 65535'
                        " or a port name (IANA_SVC_NAME: at most 15 characters, lower case"
                        " alphanumeric or '-', at least one letter)",
                    )
                )
        elif not _is_port(target):
            causes.append(
                Cause(
                    f"{at}.targetPort",
                    f"Invalid value: {target}: must be between 1 and 65535, inclusive",
                )
            )
        node_port = port.get("nodePort")
        if node_port not in (None, 0):
            if not _is_port(node_port):
                causes.append(
                    Cause(
                        f"{at}.nodePort",
                        f"Invalid value: {node_port}: must be between 1 and 65535, inclusive",
                    )
                )
            elif spec.get("type") in ("ClusterIP", "ExternalName"):
                causes.append(
                    Cause(
                        f"{at}.nodePort",
                        f"Forbidden: may not be used when `type` is '{spec.get('type')}'",
                        "FieldValueForbidden",
                    )
                )
    return causes


def _go_strings(values: list[str]) -> str:
    """A list of strings as kube's messages print one (Go's %#v of a []string)."""
    return "[]string{" + ", ".join(f'"{v}"' for v in values) + "}"


def _ips_cause(path: str, ips: list[str], message: str) -> Cause:
    return Cause(path, f"Invalid value: {_go_strings(ips)}: {message}")


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _cluster_ip_causes(spec: Obj) -> list[Cause]:
    """Upstream's ValidateServiceClusterIPsRelatedFields (and the ExternalName rules)."""
    if spec.get("type") == "ExternalName":
        causes = []
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if spec.get(key):
                causes.append(
                    Cause(
                        f"spec.{key}",
                        "Forbidden: may not be set for ExternalName services",
                        "FieldValueForbidden",
                    )
                )
        name = spec.get("externalName")
        if not name:
            causes.append(Cause("spec.externalName", "Required value", "FieldValueRequired"))
        elif not (isinstance(name, str) and is_dns1123_subdomain(name.rstrip("."))):
            causes.append(
                Cause(
                    "spec.externalName",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of'
                    " lower case alphanumeric characters, '-' or '.', and must start and end"
                    " with an alphanumeric character",
                )
            )
        return causes
    causes = []
    ip = spec.get("clusterIP") or ""
    ips = spec.get("clusterIPs") or []
    if not isinstance(ips, list) or not all(isinstance(x, str) for x in ips):
        return [Cause("spec.clusterIPs", "Invalid value: expected a list of strings")]
    if ip and ips and ips[0] != ip:
        causes.append(_ips_cause("spec.clusterIPs", ips, "first value must match `clusterIP`"))
    families = spec.get("ipFamilies") or []
    if not isinstance(families, list):
        return [*causes, Cause("spec.ipFamilies", "Invalid value: expected a list")]
    for i, family in enumerate(families):
        if family not in FAMILIES:
            causes.append(
                Cause(
                    f"spec.ipFamilies[{i}]",
                    _supported(family, FAMILIES),
                    "FieldValueNotSupported",
                )
            )
        elif family in families[:i]:
            causes.append(
                Cause(
                    f"spec.ipFamilies[{i}]", f'Duplicate value: "{family}"', "FieldValueDuplicate"
                )
            )
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in POLICIES:
        causes.append(
            Cause("spec.ipFamilyPolicy", _supported(policy, POLICIES), "FieldValueNotSupported")
        )
    bad_ip = False
    for i, value in enumerate(ips):
        if i == 0 and value == NONE:
            if len(ips) > 1:
                bad_ip = True
                causes.append(
                    _ips_cause("spec.clusterIPs", ips, "'None' must be the first and only value")
                )
            continue
        try:
            ipaddress.ip_address(value)
        except ValueError:
            bad_ip = True
            causes.append(
                Cause(
                    f"spec.clusterIPs[{i}]",
                    f'Invalid value: "{value}": must be a valid IP address, (e.g. 10.9.8.7 or'
                    " 2001:db8::ffff)",
                )
            )
    if len(ips) > 2:
        causes.append(_ips_cause("spec.clusterIPs", ips, "may only hold up to 2 values"))
    if bad_ip:
        return causes
    if len(ips) == 2 and family_of(ips[0]) == family_of(ips[1]):
        causes.append(
            _ips_cause("spec.clusterIPs", ips, "may specify no more than one IP for each IP family")
        )
    if ips and ips[0] != NONE:
        for i, (value, family) in enumerate(zip(ips, families, strict=False)):
            if family in FAMILIES and family_of(value) != family:
                want = "IPv6" if family == "IPv6" else "IPv4"
                causes.append(
                    Cause(
                        f"spec.clusterIPs[{i}]",
                        f'Invalid value: "{value}": expected an {want} value as indicated by'
                        f" `ipFamilies[{i}]`",
                    )
                )
    if is_headless(spec) and spec.get("type") in ("NodePort", "LoadBalancer"):
        causes.append(
            Cause(
                "spec.clusterIPs[0]",
                f"Invalid value: \"None\": may not be set to 'None' for {spec['type']} services",
            )
        )
    return causes


def validate(svc: Obj) -> list[Cause]:
    """The Service's own problems (names, labels and the rest are the generic strategy's)."""
    spec = _spec(svc)
    kind = spec.get("type")
    if kind not in TYPES:
        return [Cause("spec.type", _supported(kind, TYPES), "FieldValueNotSupported")]
    causes = _port_causes(spec) + _cluster_ip_causes(spec)
    affinity = spec.get("sessionAffinity")
    if affinity not in ("ClientIP", "None"):
        causes.append(
            Cause(
                "spec.sessionAffinity",
                _supported(affinity, ("ClientIP", "None")),
                "FieldValueNotSupported",
            )
        )
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.get(key)
        if value is not None and value not in ("Cluster", "Local"):
            causes.append(
                Cause(
                    f"spec.{key}", _supported(value, ("Cluster", "Local")), "FieldValueNotSupported"
                )
            )
    hc = spec.get("healthCheckNodePort")
    if hc not in (None, 0):
        if not needs_health_check(spec):
            causes.append(
                Cause(
                    "spec.healthCheckNodePort",
                    f"Invalid value: {hc}: may only be set when `type` is 'LoadBalancer' and"
                    " `externalTrafficPolicy` is 'Local'",
                )
            )
        elif not _is_port(hc):
            causes.append(
                Cause(
                    "spec.healthCheckNodePort",
                    f"Invalid value: {hc}: must be between 1 and 65535, inclusive",
                )
            )
    if spec.get("allocateLoadBalancerNodePorts") is not None and kind != "LoadBalancer":
        causes.append(
            Cause(
                "spec.allocateLoadBalancerNodePorts",
                "Forbidden: may only be used when `type` is 'LoadBalancer'",
                "FieldValueForbidden",
            )
        )
    return causes


def validate_update(old: Obj, svc: Obj) -> list[Cause]:
    """A cluster IP may not change once set (upstream's validateUpgradeDowngradeClusterIPs);
    changes to and from ExternalName, and a second family added or released, are allowed."""
    ospec, spec = old.get("spec") or {}, _spec(svc)
    if "ExternalName" in (ospec.get("type"), spec.get("type")):
        return []
    if is_headless(ospec) and is_headless(spec):
        return []
    before, after = ospec.get("clusterIPs") or [], spec.get("clusterIPs") or []
    causes = []
    if not after and before:
        causes.append(_ips_cause("spec.clusterIPs[0]", after, "primary clusterIP can not be unset"))
    for i, (was, now) in enumerate(zip(before, after, strict=False)):
        if was != now:
            causes.append(_ips_cause(f"spec.clusterIPs[{i}]", after, "may not change once set"))
    if len(after) < len(before) and after and spec.get("ipFamilyPolicy") != "SingleStack":
        causes.append(
            Cause(
                "spec.ipFamilyPolicy",
                f"Invalid value: \"{spec.get('ipFamilyPolicy')}\": must be set to 'SingleStack'"
                " when releasing the secondary clusterIP",
            )
        )
    return causes


# ------------------------------------------------------------------------------ allocation


def init_ip_families(alloc: ServiceAllocator, old: Obj | None, svc: Obj) -> list[Cause]:
    """``ipFamilyPolicy`` and ``ipFamilies`` settled against the cluster's ranges (upstream's
    initIPFamilyFields): policy from the old object or SingleStack (RequireDualStack for a
    headless Service without selector), families from the cluster IPs asked for, then the
    primary family and, for a dual-stack policy on a dual-stack cluster, the other one."""
    spec = _spec(svc)
    if not needs_cluster_ip(spec):
        return []
    ospec = (old or {}).get("spec") or {}
    configured = alloc.ranges
    if spec.get("ipFamilyPolicy") is None:
        if ospec.get("ipFamilyPolicy"):
            spec["ipFamilyPolicy"] = ospec["ipFamilyPolicy"]
        elif spec.get("clusterIP") == NONE and not spec.get("selector"):
            spec["ipFamilyPolicy"] = "RequireDualStack"
        else:
            spec["ipFamilyPolicy"] = "SingleStack"
    policy = spec["ipFamilyPolicy"]
    ips: list[str] = spec.get("clusterIPs") or []
    families: list[str] = list(spec.get("ipFamilies") or [])
    causes: list[Cause] = []
    if old is not None and policy == "SingleStack":
        if ips == (ospec.get("clusterIPs") or []) and len(ips) > 1:
            ips = spec["clusterIPs"] = ips[:1]
        if families == (ospec.get("ipFamilies") or []) and len(families) > 1:
            families = families[:1]
    if policy == "SingleStack":
        if len(ips) == 2:
            causes.append(
                Cause(
                    "spec.ipFamilyPolicy",
                    'Invalid value: "SingleStack": must be'
                    " 'RequireDualStack' or 'PreferDualStack' when multiple cluster"
                    " IPs are specified",
                )
            )
        if len(families) == 2:
            causes.append(
                Cause(
                    "spec.ipFamilyPolicy",
                    'Invalid value: "SingleStack": must be'
                    " 'RequireDualStack' or 'PreferDualStack' when multiple IP"
                    " families are specified",
                )
            )
    for i, ip in enumerate(ips):
        if ip == NONE:
            break
        family = family_of(ip)
        if i >= len(families):
            if family not in configured:
                causes.append(
                    _ips_cause(
                        f"spec.clusterIPs[{i}]", ips, f"{family} is not configured on this cluster"
                    )
                )
            else:
                families.append(family)
    if causes:
        return causes
    if spec.get("clusterIP") == NONE and not spec.get("selector"):
        if not families:
            families = [alloc.primary_family]
        if len(families) < 2 and policy != "SingleStack":
            families.append("IPv6" if families[0] == "IPv4" else "IPv4")
        spec["ipFamilies"] = families
        return []
    if policy == "RequireDualStack" and len(configured) < 2:
        causes.append(
            Cause(
                "spec.ipFamilyPolicy",
                'Invalid value: "RequireDualStack": this'
                " cluster is not configured for dual-stack services",
            )
        )
    for i, family in enumerate(families):
        if family not in configured:
            causes.append(
                Cause(
                    f"spec.ipFamilies[{i}]",
                    f'Invalid value: "{family}": not configured on this cluster',
                )
            )
    if causes:
        return causes
    if not families:
        families = [alloc.primary_family]
    if policy != "SingleStack" and len(families) == 1 and len(configured) == 2:
        families.append("IPv6" if families[0] == "IPv4" else "IPv4")
    spec["ipFamilies"] = families
    return []


def _allocate_cluster_ips(session: Session, old: Obj | None, svc: Obj) -> None:
    spec = _spec(svc)
    if not needs_cluster_ip(spec) or is_headless(spec):
        return
    ospec = (old or {}).get("spec") or {}
    held = (
        set() if old is None or not needs_cluster_ip(ospec) else set(ospec.get("clusterIPs") or [])
    )
    ips: list[str] = list(spec.get("clusterIPs") or [])
    families: list[str] = spec["ipFamilies"]
    for i, family in enumerate(families):
        if i < len(ips) and ips[i]:
            if ips[i] not in held:
                try:
                    session.take_ip(ips[i])
                except AllocationError as err:
                    raise _invalid_ips(svc, ips, f"failed to allocate IP {ips[i]}: {err}") from None
            continue
        try:
            ip = session.pick_ip(family)
        except RangeFullError as err:
            raise errors.internal(f"failed to allocate a serviceIP: {err}") from None
        if i < len(ips):
            ips[i] = ip
        else:
            ips.append(ip)
    spec["clusterIPs"] = ips
    spec["clusterIP"] = ips[0]


def _invalid_ips(svc: Obj, ips: list[str], message: str) -> errors.StatusError:
    name = str((svc.get("metadata") or {}).get("name", ""))
    return errors.invalid(SERVICES_RT, name, [_ips_cause("spec.clusterIPs", ips, f"{message}")])


def _allocate_node_ports(session: Session, old: Obj | None, svc: Obj) -> None:
    spec = _spec(svc)
    name = str((svc.get("metadata") or {}).get("name", ""))
    ospec = (old or {}).get("spec") or {}
    held: set[int] = set()
    if old is not None:
        held = {p["nodePort"] for p in _ports(ospec) if p.get("nodePort")}
        if ospec.get("healthCheckNodePort"):
            held.add(ospec["healthCheckNodePort"])
    mine: dict[int, int] = {}  # service port -> node port given to it here
    taken: set[int] = set()

    def take(port: int, at: str) -> None:
        if port in held or port in taken:
            return
        try:
            session.take_port(port)
        except AllocationError as err:
            cause = Cause(at, f"Invalid value: {port}: {err}")
            raise errors.invalid(SERVICES_RT, name, [cause]) from None
        taken.add(port)

    def pick(what: str) -> int:
        try:
            return session.pick_port()
        except RangeFullError as err:
            raise errors.internal(f"failed to allocate a {what}: {err}") from None

    if needs_node_ports(spec):
        allocate = spec.get("type") != "LoadBalancer" or spec.get("allocateLoadBalancerNodePorts")
        for i, port in enumerate(_ports(spec)):
            node_port = port.get("nodePort") or 0
            if node_port:
                take(node_port, f"spec.ports[{i}].nodePort")
            elif not allocate:
                continue
            elif port.get("port") in mine:
                node_port = mine[port["port"]]
            else:
                node_port = pick("nodePort")
            port["nodePort"] = node_port
            mine.setdefault(port.get("port"), node_port)  # type: ignore[arg-type]
    if needs_health_check(spec):
        hc = spec.get("healthCheckNodePort") or 0
        if hc:
            take(hc, "spec.healthCheckNodePort")
        else:
            spec["healthCheckNodePort"] = pick("HealthCheck NodePort")


def admit(alloc: ServiceAllocator, session: Session, old: Obj | None, svc: Obj) -> Obj:
    """The Service to store for a create (``old`` None) or an update: defaulted, normalized,
    validated and allocated (choices reserved in ``session``). Raises 422/500."""
    svc = copy.deepcopy(svc)
    set_defaults(svc)
    if old is not None:
        drop_type_dependent(old, svc)
        carry_allocated(old, svc)
    normalize_cluster_ips(old, svc)
    name = str((svc.get("metadata") or {}).get("name", ""))
    causes = validate(svc)
    if old is not None and not causes:
        causes = validate_update(old, svc)
    if not causes:
        causes = init_ip_families(alloc, old, svc)
    if causes:
        raise errors.invalid(SERVICES_RT, name, causes)
    _allocate_cluster_ips(session, old, svc)
    _allocate_node_ports(session, old, svc)
    return svc


def taken_error(svc: Obj, key: str) -> errors.StatusError:
    """422 for an address or port the client asked for that etcd says another Service holds
    (one our view did not know yet)."""
    spec = _spec(svc)
    name = str((svc.get("metadata") or {}).get("name", ""))
    if key.startswith(IP_PREFIX):
        ip = key[len(IP_PREFIX) :]
        return _invalid_ips(
            svc,
            spec.get("clusterIPs") or [],
            f"failed to allocate IP {ip}: provided IP is already allocated",
        )
    port = int(key[len(PORT_PREFIX) :])
    at = "spec.healthCheckNodePort"
    for i, p in enumerate(_ports(spec)):
        if p.get("nodePort") == port:
            at = f"spec.ports[{i}].nodePort"
            break
    return errors.invalid(
        SERVICES_RT, name, [Cause(at, f"Invalid value: {port}: provided port is already allocated")]
    )
