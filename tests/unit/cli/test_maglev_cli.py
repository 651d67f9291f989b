"""``ciliary bpf lb maglev list``: each Maglev frontend's table (cilium-dbg's ``SVC ID`` and
``LUT``), summarised as its size and how many entries each backend id holds."""

from __future__ import annotations

import io

from rich.console import Console

from ciliary.cli.bpf import render_maglev
from ciliary.core.models import MaglevTable


def test_maglev_list_summarises_each_table() -> None:
    out = io.StringIO()
    render_maglev(
        Console(file=out, width=200, color_system=None),
        [
            MaglevTable(service_id=3, family=4, backend_ids=[7, 9, 7, 7, 9]),
            MaglevTable(service_id=5, family=6, backend_ids=[2] * 251),
        ],
    )
    lines = [" ".join(line.split()) for line in out.getvalue().splitlines()]
    assert lines == [
        "SVC ID FAMILY SIZE LUT (BACKEND ID: ENTRIES)",
        "3 v4 5 7:3 9:2",
        "5 v6 251 2:251",
    ]
