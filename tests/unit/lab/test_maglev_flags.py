"""Maglev's cluster-wide seed in the lab: ``lab up`` records one seed per lab and gives it to
every agent as ``--bpf-lb-maglev-hash-seed`` (a tuple picks the same backend on every node only
with the same seed); the agent's parser validates the seed, the table size (upstream's primes)
and the algorithm, naming the flag."""

from __future__ import annotations

import pytest

from ciliary.agent.main import _parser
from ciliary.core.maglev import DEFAULT_HASH_SEED, new_hash_seed
from ciliary.lab import manager
from ciliary.lab.state import HubbleRecord, LabRecord, NodeRecord


def _argv(seed: str | None, node: str) -> list[str]:
    rec = LabRecord(
        name="demo", file=None, created_at=0, hubble=HubbleRecord(enabled=False),
        maglev_hash_seed=seed,
    )  # fmt: skip
    nrec = NodeRecord(
        name=node,
        netns=f"ciln-demo-{node}",
        state_dir=f"/run/ciliary/{node}",
        pin_dir=f"/sys/fs/bpf/ciliary/{node}",
        socket=f"/run/ciliary/{node}/agent.sock",
    )
    return manager._agent_argv(rec, nrec)[3:]


def test_every_agent_of_a_lab_gets_the_labs_seed() -> None:
    seed = new_hash_seed()
    seeds = {_parser().parse_args(_argv(seed, n)).bpf_lb_maglev_hash_seed for n in ("a", "b")}
    assert seeds == {seed}
    # a record made before the seed existed: the agents' (upstream's) default
    assert _parser().parse_args(_argv(None, "a")).bpf_lb_maglev_hash_seed == DEFAULT_HASH_SEED
    args = _parser().parse_args(["--node-name", "x"])
    assert (args.bpf_lb_algorithm, args.bpf_lb_maglev_table_size) == ("random", 16381)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--bpf-lb-maglev-table-size", "16384", "16384 is not one of upstream's prime sizes"),
        ("--bpf-lb-maglev-hash-seed", "c2hvcnQ=", "decodes to 5 bytes, expected 12"),
        ("--bpf-lb-algorithm", "roundrobin", "invalid choice: 'roundrobin'"),
    ],
)
def test_bad_maglev_flags_are_refused_by_name(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--node-name", "x", flag, value])
    err = capsys.readouterr().err
    assert flag in err and message in err
