"""Typed object models: one per kind a lab needs, each tied to its registry row, reading objects
as the API server holds them (server fields, defaults and status it does not model included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ciliary.k8s import core
from ciliary.k8s.apps import Deployment, StatefulSet
from ciliary.k8s.cilium import CiliumEndpoint, CiliumIdentity, CiliumNode
from ciliary.k8s.core import Namespace, Node, Pod, Service
from ciliary.k8s.networking import (
    CiliumClusterwideNetworkPolicy,
    CiliumNetworkPolicy,
    EndpointSlice,
    NetworkPolicy,
)
from ciliary.k8s.objects import MODELS, ObjectError, model_for, parse_object
from ciliary.k8s.resources import RESOURCES
from ciliary.lab import schema
from ciliary.policy.api import parse_policy_documents

ROOT = Path(__file__).resolve().parents[3]


def test_every_model_has_its_registry_row() -> None:
    rows = {(r.api_version, r.kind): r for r in RESOURCES}
    for key, model in MODELS.items():
        assert key in rows, f"{model.__name__} {key} is not served"
        assert model_for(rows[key]) is model
    assert len(MODELS) == 15
    assert model_for(next(r for r in RESOURCES if r.kind == "ConfigMap")) is None


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "uid": "0b6f1f52-0000-4000-8000-000000000001",
        "resourceVersion": "42",
        "creationTimestamp": "2026-12-04T22:00:00Z",
        "labels": {"app": "web", "app.kubernetes.io/part-of": "shop"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "managedFields": [{"manager": "kubectl"}],  # not modelled: dropped
    },
    "spec": {
        "nodeName": "node-1",
        "dnsPolicy": "ClusterFirst",  # not modelled: dropped
        "containers": [
            {
                "name": "main",
                "image": "ciliary",
                "command": ["ciliary", "workload", "http"],
                "args": ["--port", "8080"],
                "env": [{"name": "MODE", "value": "fast"}],
                "ports": [{"name": "http", "containerPort": 8080}],
            }
        ],
    },
    "status": {"phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}]},
}


def test_a_pod_as_stored() -> None:
    pod = parse_object(POD)
    assert isinstance(pod, Pod)
    assert (pod.key, pod.spec.node_name, pod.status.pod_ip) == ("shop/web", "node-1", "10.0.0.7")
    assert pod.labels["app"] == "web" and pod.metadata.resource_version == "42"
    container = pod.spec.containers[0]
    assert container.argv() == ["ciliary", "workload", "http", "--port", "8080"]
    assert pod.spec.named_ports()["http"].container_port == 8080
    assert pod.spec.named_ports()["http"].protocol == "TCP"
    out = pod.to_json()
    assert out["status"]["podIPs"] == [{"ip": "10.0.0.7"}] and out["status"]["podIP"] == "10.0.0.7"
    assert "managedFields" not in out["metadata"] and "dnsPolicy" not in out["spec"]
    assert Pod.model_validate(out) == pod


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"metadata": {"name": "web", "labels": {"-bad": "x"}}},
            'Pod web: metadata.labels["-bad"]: invalid key: expected a label key',
        ),
        (
            {"metadata": {"name": "web", "labels": {"app": "a b"}}},
            "Pod web: metadata.labels.app: expected a label value",
        ),
        (
            {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 0}]}]}},
            "Pod: spec.containers[0].ports[0].containerPort: expected a number >= 1, got int 0",
        ),
        (
            {"spec": {"restartPolicy": "Sometimes"}},
            "Pod: spec.restartPolicy: expected 'Always', 'OnFailure' or 'Never', got 'Sometimes'",
        ),
    ],
)
def test_bad_fields_are_named(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ObjectError) as info:
        parse_object({"apiVersion": "v1", "kind": "Pod", **patch})
    assert str(info.value).startswith(message)


def test_unmodelled_kinds_are_left_untyped() -> None:
    assert parse_object({"apiVersion": "v1", "kind": "ConfigMap", "data": {}}) is None
    assert parse_object({"apiVersion": "apps/v2", "kind": "Deployment"}) is None


def test_node_service_and_endpoint_slice() -> None:
    node = Node.model_validate(
        {
            "metadata": {"name": "node-1"},
            "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/120"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]},
        }
    )
    assert node.spec.pod_cidrs == ["10.0.0.0/24", "fd00::/120"]
    assert node.internal_ips() == ["192.168.0.2"]
    svc = Service.model_validate(
        {
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "db"},
                "ports": [{"name": "sql", "port": 5432, "targetPort": "sql"}],
            },
        }
    )
    assert svc.spec.headless and svc.spec.type == "ClusterIP"
    assert svc.spec.ports[0].target_port == "sql" and svc.spec.ports[0].protocol == "TCP"
    assert svc.to_json()["spec"]["clusterIP"] == "None"
    lb = Service.model_validate(
        {
            "metadata": {"name": "lb"},
            "spec": {
                "type": "LoadBalancer",
                "ipFamilyPolicy": "PreferDualStack",
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 31000,
                "allocateLoadBalancerNodePorts": False,
                "ports": [{"port": 80}],
            },
        }
    )  # what the API server stores for one (apiserver/services.py)
    assert (lb.spec.ip_family_policy, lb.spec.health_check_node_port) == ("PreferDualStack", 31000)
    assert lb.spec.allocate_load_balancer_node_ports is False
    eps = EndpointSlice.model_validate(
        {
            "metadata": {"name": "db-x1", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.5"], "conditions": {"ready": True}, "nodeName": "node-1"},
                {"addresses": ["10.0.0.6"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.7"]},
            ],
            "ports": [{"name": "sql", "port": 5432}],
        }
    )
    assert eps.service_name == "db"
    assert eps.ready_addresses() == ["10.0.0.5", "10.0.0.7"]


def _deployment(selector: dict[str, Any], labels: dict[str, str]) -> Deployment:
    return Deployment.model_validate(
        {
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "replicas": 3,
                "selector": selector,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "command": ["ciliary"]}]},
                },
            },
        }
    )


def test_workload_selector_must_match_its_template() -> None:
    good = _deployment({"matchLabels": {"app": "web"}}, {"app": "web", "tier": "front"})
    assert good.selector_problem() is None and good.spec.replicas == 3
    assert _deployment({"matchLabels": {"app": "db"}}, {"app": "web"}).selector_problem() == (
        "spec.template.metadata.labels: Invalid value: {'app': 'web'}: `selector` does not match"
        " template `labels`"
    )
    assert _deployment({}, {"app": "web"}).selector_problem() == (
        "spec.selector: Invalid value: empty selector is invalid for deployment"
    )
    expr = {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}
    assert _deployment(expr, {"app": "web"}).selector_problem() == (
        "spec.selector.matchExpressions[0].values: Required value: must be specified when"
        " `operator` is 'In' or 'NotIn'"
    )
    sts = StatefulSet.model_validate(
        {
            "metadata": {"name": "db"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}}},
        }
    )
    assert (sts.spec.replicas, sts.spec.service_name) == (1, "db")


def test_cilium_objects_keep_upstreams_dashed_fields() -> None:
    ident = CiliumIdentity.model_validate(
        {"metadata": {"name": "51234"}, "security-labels": {"k8s:app": "web"}}
    )
    assert ident.number == 51234 and ident.security_labels == {"k8s:app": "web"}
    assert ident.to_json()["security-labels"] == {"k8s:app": "web"}
    cep = CiliumEndpoint.model_validate(
        {
            "metadata": {"name": "web", "namespace": "shop"},
            "status": {
                "id": 1234,
                "identity": {"id": 51234, "labels": ["k8s:app=web"]},
                "networking": {"addressing": [{"ipv4": "10.0.0.7"}], "node": "192.168.0.2"},
                "named-ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            },
        }
    )
    assert cep.status.identity is not None and cep.status.identity.id == 51234
    assert cep.status.named_ports[0].name == "http"
    node = CiliumNode.model_validate(
        {
            "metadata": {"name": "node-1"},
            "spec": {
                "addresses": [{"type": "InternalIP", "ip": "192.168.0.2"}],
                "ipam": {"podCIDRs": ["10.0.0.0/24"]},
            },
        }
    )
    assert node.spec.ipam.pod_cidrs == ["10.0.0.0/24"]


def test_policy_envelopes_hand_their_body_to_the_policy_parser() -> None:
    """Every policy of the shipped examples reads as an envelope, and the envelope's JSON is the
    same policy to policy.api as the document itself."""
    count = 0
    for path in sorted((ROOT / "examples" / "policies").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for index, doc in enumerate(docs, 1):
            if not doc.get("kind", "").endswith("NetworkPolicy"):
                continue
            envelope = parse_object(doc)
            assert isinstance(
                envelope, CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy | NetworkPolicy
            )
            again = parse_policy_documents([(index, envelope.to_json())], path.name)
            assert again == parse_policy_documents([(index, doc)], path.name)
            count += 1
    assert count >= 10


def test_the_default_scenarios_objects_read_as_kubernetes_objects() -> None:
    """The lab file's Namespace and Pod documents are Kubernetes objects too."""
    text = (ROOT / "src" / "ciliary" / "lab" / "scenarios" / "default.yaml").read_text()
    kinds = []
    for doc in yaml.safe_load_all(text):
        if doc and doc.get("kind") in ("Namespace", "Pod"):
            obj = parse_object(doc)
            assert isinstance(obj, Namespace | Pod)
            kinds.append(obj.kind)
    assert "Pod" in kinds


def test_containers_are_one_model_strict_in_lab_files() -> None:
    """The lab file's Container is core.Container made strict: the same fields and name rules
    (port names, env names, unique port names), but an unknown field is an error there."""
    doc = {
        "name": "main",
        "command": ["x"],
        "env": [{"name": "A", "value": "1", "valueFrom": {}}],
        "resources": {},
    }
    assert core.Container.model_validate(doc).env[0].name == "A"  # from the API: dropped
    with pytest.raises(ValidationError, match=r"env\.0\.valueFrom"):
        schema.Container.model_validate(doc)
    assert issubclass(schema.Container, core.Container)
    ports = [{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}]
    for model in (core.Container, schema.Container):
        with pytest.raises(
            ValidationError, match=r"duplicate port name 'http' \(also ports\[0\]\)"
        ):
            model.model_validate({"name": "c", "ports": ports})
        with pytest.raises(ValidationError, match="expected a port name"):
            model.model_validate({"name": "c", "ports": [{"name": "HTTP", "containerPort": 80}]})
