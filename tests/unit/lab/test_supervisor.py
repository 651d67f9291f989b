"""The supervisor's restart back-off (kubelet's CrashLoopBackOff, shortened for a lab) and how it
names an agent's exit."""

from __future__ import annotations

import signal

from ciliary.lab.supervisor import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BACKOFF_RESET_AFTER,
    _Backoff,
    describe_exit,
)


def test_backoff_is_kubelets() -> None:
    assert (BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET_AFTER) == (10.0, 300.0, 600.0)


def test_backoff_doubles_up_to_the_cap() -> None:
    b = _Backoff(started_at=0.0)
    waits = [b.exited(now=1.0) for _ in range(9)]
    assert waits[:4] == [
        BACKOFF_INITIAL,
        2 * BACKOFF_INITIAL,
        4 * BACKOFF_INITIAL,
        8 * BACKOFF_INITIAL,
    ]
    assert max(waits) == BACKOFF_MAX and waits[-1] == BACKOFF_MAX
    assert b.restart_at == 1.0 + BACKOFF_MAX


def test_backoff_starts_over_after_a_long_run() -> None:
    b = _Backoff(started_at=0.0)
    for _ in range(5):
        b.exited(now=1.0)
    b.started_at = 10.0
    assert b.exited(now=10.0 + BACKOFF_RESET_AFTER) == BACKOFF_INITIAL


def test_max_restart_period_caps_the_backoff_and_is_every_delay_under_ten_seconds() -> None:
    """KubeletConfiguration's crashLoopBackOff.maxContainerRestartPeriod (the Lab's
    spec.kubelet): the doubling stops at it; under the initial 10 s it is the first delay too."""
    b = _Backoff(60.0, started_at=0.0)
    assert [b.exited(now=1.0) for _ in range(5)] == [10.0, 20.0, 40.0, 60.0, 60.0]
    short = _Backoff(2.0, started_at=0.0)
    assert [short.exited(now=1.0) for _ in range(3)] == [2.0, 2.0, 2.0]
    short.started_at = 10.0
    assert short.exited(now=10.0 + BACKOFF_RESET_AFTER) == 2.0


def test_exit_descriptions() -> None:
    assert describe_exit(128 + signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(None) == "exited (status unknown)"
