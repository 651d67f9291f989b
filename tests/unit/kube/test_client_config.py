"""Client configuration: in-cluster (service host/port env + the service account's token and CA,
the token sent as a bearer) and kubeconfig; what is missing is named; the informer's store
keeps its indexes with the objects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ciliary.kube.client import ApiError, ConfigError, load_configuration, object_key
from ciliary.kube.informer import Backoff, Store


def service_account(tmp_path: Path) -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok3n")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    return sa


def test_in_cluster(tmp_path: Path) -> None:
    sa = service_account(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = asyncio.run(load_configuration(environ=env, service_account_dir=sa))
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.ssl_ca_cert == str(sa / "ca.crt")
    auth = asyncio.run(cfg.auth_settings())
    assert auth["BearerToken"]["value"] == "Bearer tok3n"
    v6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    cfg6 = asyncio.run(load_configuration(environ=v6, service_account_dir=sa))
    assert cfg6.host == "https://[fd00::1]:6443"


def test_in_cluster_without_env_or_token(tmp_path: Path) -> None:
    sa = service_account(tmp_path)
    with pytest.raises(ConfigError, match=r"in-cluster service account.*host/port"):
        asyncio.run(load_configuration(environ={}, service_account_dir=sa))
    (sa / "token").unlink()
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="token"):
        asyncio.run(load_configuration(environ=env, service_account_dir=sa))


def test_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"kubeconfig .*nope"):
        asyncio.run(load_configuration(path))


def test_api_error_classes() -> None:
    assert ApiError(0, "Unavailable").unavailable and ApiError(503, "x").unavailable
    assert ApiError(410, "Expired").gone
    assert ApiError(409, "AlreadyExists").already_exists
    assert ApiError(409, "Conflict").conflict and not ApiError(409, "Conflict").already_exists
    err = ApiError.from_status({"kind": "Status", "code": 410, "reason": "Expired", "message": "m"})
    assert (err.status, err.reason, err.message) == (410, "Expired", "m")


def test_store_indexes_follow_objects() -> None:
    store = Store()
    store.add_index("app", lambda o: [o["metadata"]["labels"]["app"]])

    def obj(name: str, app: str, ns: str | None = "t") -> dict[str, object]:
        meta: dict[str, object] = {"name": name, "labels": {"app": app}}
        if ns:
            meta["namespace"] = ns
        return {"metadata": meta}

    store.put(obj("a", "web"))
    store.put(obj("b", "web"))
    assert sorted(object_key(o) for o in store.by_index("app", "web")) == ["t/a", "t/b"]
    store.put(obj("a", "db"))
    assert [object_key(o) for o in store.by_index("app", "web")] == ["t/b"]
    assert [object_key(o) for o in store.by_index("app", "db")] == ["t/a"]
    store.remove("t/b")
    assert store.by_index("app", "web") == []
    store.put(obj("n1", "web", None))
    assert store.get("n1") is not None and "n1" in store and len(store) == 2


def test_backoff_doubles_to_its_maximum_and_resets() -> None:
    b = Backoff(initial=0.1, maximum=0.5, jitter=0.0)
    assert [round(b.delay(), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.delay() == 0.1
