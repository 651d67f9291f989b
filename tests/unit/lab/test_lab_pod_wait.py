"""What ``lab up``/``lab apply`` read of a pod's status while they wait for the file's pods (the
kubelet role runs them): Ready, still starting, or the reason it cannot run, naming the pod."""

from __future__ import annotations

from typing import Any

from ciliary.lab import kubelet, manager

STARTED = "2026-01-01T00:00:00Z"


def _pod(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "shop"}, "status": status}


def _status(phase: str, *containers: kubelet.ContainerState, **kw: Any) -> dict[str, Any]:
    return kubelet.pod_status(
        phase=phase, containers=list(containers), container_id="lab-shop-web",
        pod_ips=["10.0.0.2"], host_ip="10.0.0.1", started_at=STARTED, **kw,
    )  # fmt: skip


def test_a_running_pod_is_ready_and_a_pending_one_is_still_starting() -> None:
    running = _pod(_status("Running", kubelet.ContainerState("main", None, running=True)))
    assert manager._pod_ready(running) and manager._pod_problem("shop/web", running) is None
    assert not manager._pod_ready(_pod({})) and manager._pod_problem("shop/web", _pod({})) is None
    creating = kubelet.ContainerState(
        "main", None, running=False, waiting=("ContainerCreating", "")
    )
    starting = _pod(_status("Pending", creating))
    assert not manager._pod_ready(starting)
    assert manager._pod_problem("shop/web", starting) is None
    done = _pod(_status("Succeeded", kubelet.ContainerState("main", None, False, exit_code=0)))
    assert manager._pod_ready(done)


def test_a_pod_the_kubelet_role_cannot_run_fails_naming_the_pod_and_the_reason() -> None:
    message = "pod shop/web: container main cannot start 'nope' (command not found): ..."
    failed = kubelet.ContainerState(
        "main", None, running=False, waiting=("CreateContainerError", message)
    )
    problem = manager._pod_problem("shop/web", _pod(_status("Pending", failed, message=message)))
    assert problem == f"{message} (CreateContainerError)"
    refused = kubelet.ContainerState("main", "nginx", running=False, waiting=("Refused", "x"))
    status = _status("Failed", refused, reason="ImageWithoutCommand", message="no command")
    problem = manager._pod_problem("shop/web", _pod(status))
    assert problem == "pod shop/web: no command (ImageWithoutCommand)"
