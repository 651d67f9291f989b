"""cilium-agent's Hubble TLS flags (#10.18): TLS is the default for the TCP listener, as
upstream; ``--hubble-disable-tls`` is the explicit opt-out; half a key pair is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciliary.agent.main import _parser, hubble_config
from ciliary.lab.certs import LabCA, agent_flags

BASE = ["--node-name", "n1"]


def _cfg(*argv: str):  # type: ignore[no-untyped-def]
    return hubble_config(_parser().parse_args([*BASE, *argv]))


def test_tls_is_on_by_default() -> None:
    cfg = _cfg()
    assert cfg.disable_tls is False and cfg.listen_address == ":4244"
    assert cfg.tls_cert_file is None  # no certificate: the agent opens no TCP listener


def test_disable_tls_is_the_explicit_opt_out() -> None:
    assert _cfg("--hubble-disable-tls").disable_tls is True
    assert _cfg("--hubble-disable-tls=false").disable_tls is False


def test_certificate_flags(tmp_path: Path) -> None:
    flags = agent_flags(LabCA(tmp_path), "n1")
    cfg = _cfg(*flags)
    assert cfg.disable_tls is False
    assert cfg.tls_cert_file == Path(flags[1]) and cfg.tls_key_file == Path(flags[3])
    assert cfg.tls_client_ca_files == (Path(flags[5]),)
    with pytest.raises(ValueError, match="go together"):
        _cfg("--hubble-tls-cert-file", flags[1])
    with pytest.raises(ValueError, match="does not exist"):
        _cfg("--hubble-tls-cert-file", "/nonexistent.crt", "--hubble-tls-key-file", flags[3])
