"""The lab's supervisor: kubelet's part for each node's agent (a DaemonSet pod in a cluster).

One process per lab (``python -m ciliary.lab.supervisor LAB``), started by ``lab up`` before the
first node and stopped (by pid) by ``lab down`` before anything else goes. It is the only
starter of agents, so it is their parent and knows how each one ended:

* a node's agent is started once the manager marks the node ready for it (``agent_wanted``);
* an agent that exits is started again after kubelet's CrashLoopBackOff: 10 s, doubling, at
  most 5 min; an agent that ran for 10 minutes starts over at 10 s. The Lab's
  ``spec.kubelet.crashLoopBackOff.maxContainerRestartPeriod`` lowers the cap (one under 10 s is
  every delay), as the KubeletConfiguration field does. Each such restart counts in the node's
  ``agent_restarts``, with ``agent_last_exit`` (shown by ``lab status``);
* ``lab stop-agent`` holds a node's agent down (a ``hold-<node>`` file: no restart) until
  ``lab restart-agent``, for outages on purpose;
* ``lab restart-agent`` asks for a restart with a ``restart-<node>`` file: the agent is stopped
  (SIGTERM, SIGKILL after 5 s) and started at once, not counted (as a pod deleted by hand);
* the restart contract holds: a stopped or dead agent leaves programs attached and maps pinned,
  so pods keep their traffic while it is down, and the new agent restores its endpoints;
* the lab's **etcd and API server** (static pods under kubelet in a kubeadm cluster) are
  restarted the same way when they exit, each with its own back-off: etcd on its ports with its
  data (no object or revision is lost), the API server on its port (kubeconfigs stay valid), etcd
  first since the API server's readiness reads it. Restarts are counted in the record's
  ``control_plane`` (``lab status``); the new pids go to ``controlplane.json``;
* the lab's **cluster processes** (``ciliary-controller-manager``, ``ciliary-operator`` and the
  kubelet role, ``lab.kubeletd``: the record's ``processes``, marked wanted by ``lab up``) are
  started and restarted the same way, each with its own back-off, counted in its record.

The supervisor writes only the ``agent_*`` fields of the record, the control plane's restart
counts and the cluster processes' pid/restart fields, under the record's lock. Stopping the
supervisor leaves the agents, the control plane and the cluster processes running.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from dataclasses import dataclass, field
from types import FrameType

from ciliary.apiserver.etcdserver import restart_etcd
from ciliary.lab import controlplane, manager, process
from ciliary.lab.state import ControlPlaneRecord, LabRecord, NodeRecord, ProcessRecord
from ciliary.processes import exit_now

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
TICK = 0.2
CONTROL_PLANE = ("etcd", "apiserver")  # in restart order

log = logging.getLogger("ciliary.lab.supervisor")


@dataclass
class _Backoff:
    """kubelet's restart back-off for one agent: the delay before the next start, at most
    ``maximum`` (maxContainerRestartPeriod; the first delay too when it is under 10 s)."""

    maximum: float = BACKOFF_MAX
    delay: float = field(init=False)
    restart_at: float | None = None  # set while an exited agent waits for its restart
    started_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.delay = min(BACKOFF_INITIAL, self.maximum)

    def exited(self, now: float) -> float:
        if now - self.started_at >= BACKOFF_RESET_AFTER:
            self.delay = min(BACKOFF_INITIAL, self.maximum)
        wait = self.delay
        self.restart_at = now + wait
        self.delay = min(self.delay * 2, self.maximum)
        return wait


def describe_exit(code: int | None) -> str:
    """``exit code 1``, ``killed by SIGKILL``, or ``exited`` when the status is unknown."""
    if code is None:
        return "exited (status unknown)"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class Supervisor:
    def __init__(self, lab: str) -> None:
        self.lab = lab
        self._backoff: dict[str, _Backoff] = {}
        self._max_restart_period = BACKOFF_MAX
        self._stopping = False

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> None:
        while not self._stopping:
            try:
                rec = manager.record(self.lab)
                self._max_restart_period = rec.max_restart_period_s
                if rec.control_plane is not None:
                    self._tend_control_plane()
                for nrec in rec.nodes:
                    if nrec.agent_wanted:
                        self._tend(rec, nrec)
                for pname, prec in rec.processes.items():
                    if prec.wanted:
                        self._tend_process(rec, pname, prec)
            except manager.LabError:
                return  # the lab is gone
            except Exception:
                # a start that failed (spawn, cgroup) is tried again on the next tick
                log.exception("supervising lab %s", self.lab)
            time.sleep(TICK)

    def _tend(self, rec: LabRecord, nrec: NodeRecord) -> None:
        now = time.monotonic()
        backoff = self._backoff.setdefault(nrec.name, _Backoff(self._max_restart_period))
        request = manager.supervisor_dir(self.lab) / f"restart-{nrec.name}"
        if request.exists():
            log.info("node %s: restart requested", nrec.name)
            process.stop(nrec.agent_pid, nrec.agent_start_time)
            request.unlink(missing_ok=True)
            self._start(rec, nrec, backoff, counted=False)
            return
        held = (manager.supervisor_dir(self.lab) / f"hold-{nrec.name}").exists()
        if nrec.agent_pid is None:
            if not held:
                self._start(rec, nrec, backoff, counted=False)
            return
        if process.alive(nrec.agent_pid, nrec.agent_start_time):
            return
        if held:
            if process.exit_status(nrec.agent_pid) is not None:
                log.info("node %s: agent stopped and held down", nrec.name)
            return
        if backoff.restart_at is None:
            how = describe_exit(process.exit_status(nrec.agent_pid, process.ENDING_WAIT))
            wait = backoff.exited(now)
            pid = nrec.agent_pid
            log.warning("node %s: agent %s %s; restart in %.0fs", nrec.name, pid, how, wait)

            def note(n: NodeRecord) -> None:
                n.agent_last_exit, n.agent_last_exit_at = how, time.time()

            manager.update_node(self.lab, nrec.name, note)
        elif now >= backoff.restart_at:
            self._start(rec, nrec, backoff, counted=True)

    def _tend_control_plane(self) -> None:
        cp = manager.control_plane(self.lab)
        if cp is None:
            return
        for part in CONTROL_PLANE:
            if cp.etcd.alive() if part == "etcd" else cp.apiserver_alive():
                continue
            # "control-plane/..." cannot be a node's name (no "/" in names)
            backoff = self._backoff.setdefault(
                f"control-plane/{part}", _Backoff(self._max_restart_period)
            )
            now = time.monotonic()
            if backoff.restart_at is None:
                pid = cp.etcd.pid if part == "etcd" else cp.apiserver_pid
                how = describe_exit(process.exit_status(pid, process.ENDING_WAIT))
                wait = backoff.exited(now)
                log.warning("control plane: %s %s %s; restart in %.0fs", part, pid, how, wait)

                def note(c: ControlPlaneRecord, part: str = part, how: str = how) -> None:
                    setattr(c, f"{part}_last_exit", how)

                manager.update_control_plane(self.lab, note)
            elif now >= backoff.restart_at:
                # counted as kubelet counts a container start, also one that fails (then the
                # next tick finds it dead again and backs off further)
                backoff.restart_at, backoff.started_at = None, now

                def count(c: ControlPlaneRecord, part: str = part) -> None:
                    field = f"{part}_restarts"
                    setattr(c, field, getattr(c, field) + 1)

                manager.update_control_plane(self.lab, count)
                if part == "etcd":
                    cp.etcd = restart_etcd(cp.etcd)
                    cp.save()
                else:
                    controlplane.restart_apiserver(cp)
                log.info("control plane: %s restarted", part)

    def _tend_process(self, rec: LabRecord, name: str, prec: ProcessRecord) -> None:
        # "process/..." cannot be a node's name (no "/" in names)
        backoff = self._backoff.setdefault(f"process/{name}", _Backoff(self._max_restart_period))
        now = time.monotonic()
        if prec.pid is not None and process.alive(prec.pid, prec.start_time):
            return
        if prec.pid is not None and backoff.restart_at is None:
            how = describe_exit(process.exit_status(prec.pid, process.ENDING_WAIT))
            wait = backoff.exited(now)
            log.warning("%s: %s %s; restart in %.0fs", name, prec.pid, how, wait)

            def note(p: ProcessRecord, how: str = how) -> None:
                p.last_exit = how

            manager.update_process(self.lab, name, note)
            return
        if prec.pid is not None and backoff.restart_at is not None and now < backoff.restart_at:
            return
        counted = prec.pid is not None
        started = manager.spawn_process(rec, name)
        backoff.restart_at, backoff.started_at = None, now
        log.info("%s: started, pid %s", name, started.pid)

        def record(p: ProcessRecord) -> None:
            p.pid, p.start_time = started.pid, started.start_time
            if counted:
                p.restarts += 1

        manager.update_process(self.lab, name, record)

    def _start(self, rec: LabRecord, nrec: NodeRecord, backoff: _Backoff, *, counted: bool) -> None:
        manager.spawn_agent(rec, nrec)
        backoff.restart_at, backoff.started_at = None, time.monotonic()
        log.info("node %s: agent started, pid %s", nrec.name, nrec.agent_pid)

        def started(n: NodeRecord) -> None:
            n.agent_pid, n.agent_start_time = nrec.agent_pid, nrec.agent_start_time
            n.agent_log_offset = nrec.agent_log_offset
            if counted:
                n.agent_restarts += 1

        manager.update_node(self.lab, nrec.name, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ciliary-lab-supervisor")
    parser.add_argument("lab")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sup = Supervisor(args.lab)
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    sup.run()
    log.info("supervisor of lab %s: stopped", args.lab)
    return 0


if __name__ == "__main__":
    # every lab down waited 0.4-1 s for the finalization of the lab's modules (strace: no
    # system call between the handled SIGTERM and exit_group); nothing here needs it
    exit_now(main())
