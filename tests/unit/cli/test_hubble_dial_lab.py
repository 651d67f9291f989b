"""``ciliary hubble`` towards a lab's relay (#10.19): the published address is found (a unix
socket by default), and for a lab's TLS relay the lab's CA and user certificate are used
unless the TLS flags name others."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ciliary.cli import hubble_dial
from ciliary.hubble.client import ClientTLS
from ciliary.lab.certs import LabCA, relay_flags


def _args(server: str, **tls: Any) -> argparse.Namespace:
    base = {
        "server": server, "timeout": 1.0, "tls": False, "tls_allow_insecure": False,
        "tls_ca_cert_files": None, "tls_client_cert_file": None, "tls_client_key_file": None,
        "tls_server_name": None,
    }  # fmt: skip
    return argparse.Namespace(**{**base, **tls})


def test_lab_relay_socket_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CILIARY_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("HUBBLE_SERVER", raising=False)
    lab = tmp_path / "lab" / "one"
    lab.mkdir(parents=True)
    (lab / "relay.addr").write_text(f"unix://{lab}/hubble-relay.sock\n")
    assert hubble_dial.default_server() == f"unix://{lab}/hubble-relay.sock"


def test_lab_tls_relay_uses_the_labs_client_certificate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CILIARY_RUN_DIR", str(tmp_path))
    for port, name in ((4301, "one"), (4302, "two")):  # several labs: found by the address
        lab = tmp_path / "lab" / name
        lab.mkdir(parents=True)
        (lab / "relay.addr").write_text(f"tls://127.0.0.1:{port}\n")
    ca = LabCA(lab)
    relay_flags(ca, tcp=True)
    seen: list[ClientTLS | None] = []
    monkeypatch.setattr(hubble_dial, "connect_sync", lambda addr, tls, timeout: seen.append(tls))
    ctx: Any = SimpleNamespace(node=None)
    hubble_dial.dial(_args("tls://127.0.0.1:4302"), ctx)
    pair = ca.pair("hubble-client")
    assert seen[-1] == ClientTLS(ca.ca_cert, pair.cert, pair.key)
    # explicit flags win
    hubble_dial.dial(_args("tls://127.0.0.1:4302", tls_ca_cert_files=["/x/ca.pem"]), ctx)
    assert seen[-1] is not None and seen[-1].cert_file is None
    # an address no lab publishes: nothing of the lab's
    hubble_dial.dial(_args("tls://127.0.0.1:9999"), ctx)
    assert seen[-1] is not None and seen[-1].cert_file is None
