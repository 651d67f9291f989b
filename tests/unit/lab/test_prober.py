"""Container probes: kubelet's thresholds and initial results (``lab.prober.ProbeState``), the
probe model's rules (``k8s.core.Probe``/``Container``), the pod status they decide, and the API
server's 422 for a probe kube-apiserver would refuse."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ciliary.apiserver import errors, strategy
from ciliary.k8s import core
from ciliary.k8s.resources import by_path
from ciliary.lab import kubelet, prober


def probe(**fields: Any) -> core.Probe:
    return core.Probe.model_validate({"tcpSocket": {"port": 80}, **fields})


def test_readiness_starts_failed_and_flips_after_its_thresholds() -> None:
    state = prober.initial_state("readiness", probe(successThreshold=2, failureThreshold=3))
    assert not state.ok
    assert not state.record(True)  # one success of two
    assert state.record(True) and state.ok
    assert not state.record(False) and not state.record(False) and state.ok
    assert not state.record(True) and state.ok  # a success resets the failures
    assert [state.record(False) for _ in range(3)] == [False, False, True] and not state.ok


def test_liveness_starts_succeeded_and_startup_starts_failed() -> None:
    assert prober.initial_state("liveness", probe()).ok
    live = prober.initial_state("liveness", probe(failureThreshold=1))
    assert live.record(False) and not live.ok
    assert not prober.initial_state("startup", probe()).ok


def test_kubelet_defaults_and_named_ports() -> None:
    c = core.Container.model_validate(
        {
            "name": "web",
            "ports": [{"name": "health", "containerPort": 8081}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "health"}},
        }
    )
    p = c.readiness_probe
    assert p is not None and p.http_get is not None
    assert (p.period_seconds, p.timeout_seconds, p.failure_threshold) == (10, 1, 3)
    assert (p.success_threshold, p.initial_delay_seconds, p.http_get.scheme) == (1, 0, "HTTP")
    assert c.port_number(p.http_get.port) == 8081 and c.port_number(9) == 9


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({"readinessProbe": {"periodSeconds": 1}}, "exactly one handler"),
        (
            {"readinessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}}},
            "exactly one",
        ),
        ({"livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}}, "must be 1"),
        ({"startupProbe": {"tcpSocket": {"port": 1}, "successThreshold": 2}}, "must be 1"),
        ({"readinessProbe": {"tcpSocket": {"port": "nope"}}}, "not one of the container's ports"),
        ({"readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 0}}, "greater than"),
    ],
)
def test_probes_kube_apiserver_refuses(container: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        core.Container.model_validate({"name": "c", **container})


def test_pod_ready_needs_every_container_ready_by_its_probes() -> None:
    def status(*ready: bool) -> dict[str, Any]:
        return kubelet.pod_status(
            phase="Running",
            containers=[
                kubelet.ContainerState(name=f"c{i}", image=None, running=True, ready=r)
                for i, r in enumerate(ready)
            ],
            container_id="x", pod_ips=["10.0.0.1"], host_ip=None, started_at="t",
        )  # fmt: skip

    def conditions(s: dict[str, Any]) -> dict[str, str]:
        return {c["type"]: c["status"] for c in s["conditions"]}

    s = status(True, False)
    assert conditions(s)["Ready"] == "False" and conditions(s)["ContainersReady"] == "False"
    assert [c["ready"] for c in s["containerStatuses"]] == [True, False]
    assert conditions(status(True, True))["Ready"] == "True"


def test_a_run_the_prober_has_not_started_is_ready_only_without_probes() -> None:
    p = prober.Prober("lab", on_change=lambda _k: None, kill=_no_kill)
    plain = core.Container(name="a")
    gated = core.Container.model_validate(
        {"name": "b", "readinessProbe": {"exec": {"command": ["x"]}}}
    )
    assert p.ready("ns/p", "uid", plain, 0) and not p.ready("ns/p", "uid", gated, 0)
    started = core.Container.model_validate(
        {"name": "s", "startupProbe": {"tcpSocket": {"port": 1}}}
    )
    assert not p.started("ns/p", "uid", started, 0) and p.started("ns/p", "uid", plain, 0)


async def _no_kill(_pod: str, _container: str) -> None:
    raise AssertionError("no kill expected")


def test_the_api_server_refuses_an_invalid_probe_with_its_field_path() -> None:
    deployments = by_path("apps", "v1", "deployments")
    live = {"tcpSocket": {"port": 1}, "successThreshold": 3}
    obj = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x", "livenessProbe": live},
        ]}}},
    }  # fmt: skip
    with pytest.raises(errors.StatusError) as caught:
        strategy.validate(deployments, obj)
    assert caught.value.code == 422
    causes = caught.value.details["causes"]
    assert causes == [
        {
            "reason": "FieldValueInvalid",
            "message": "must be 1",
            "field": "spec.template.spec.containers[0].livenessProbe.successThreshold",
        }
    ]
