"""docker-compose.yml parses as `docker compose config` parses it, and keeps our rules.

No Docker engine or compose plugin is needed: infra/composecheck is a small Go program over
compose-go, the loader behind `docker compose config`. It is built once into the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHECKER_SRC = ROOT / "infra" / "composecheck"
PROFILES = ("demo", "gpu", "pipeline", "dashboards")


@pytest.fixture(scope="module")
def composecheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = (
        Path(os.environ.get("UNDERTOW_CACHE_DIR", Path.home() / ".cache" / "undertow"))
        / "go1.23.4"
        / "bin"
        / "go"
    )  # where infra/require-tools.sh puts Go when none is usable
    go = str(cached) if cached.is_file() else shutil.which("go")
    assert go, "Go 1.23+ is needed to build infra/composecheck; run `make setup`"
    out = tmp_path_factory.mktemp("composecheck") / "composecheck"
    build = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=CHECKER_SRC,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, f"building composecheck failed:\n{build.stderr}"
    return out


def _config(checker: Path, *profiles: str, env: dict[str, str] | None = None) -> Any:
    args = [str(checker), str(ROOT / "docker-compose.yml")]
    for profile in profiles:
        args += ["--profile", profile]
    clean_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLICKHOUSE_", "GRAFANA_"))
    }
    result = subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, env={**clean_env, **(env or {})}
    )
    assert result.returncode == 0, f"docker-compose.yml does not load: {result.stderr}"
    return yaml.safe_load(result.stdout)


def test_compose_file_loads_with_every_profile(composecheck: Path) -> None:
    config = _config(composecheck, *PROFILES)
    assert set(config["services"]) == {
        "kafka",
        "clickhouse",
        "setup",
        "demo",
        "vllm",
        "gateway",
        "judge",
        "grafana",
        *("ingest", "drift", "policy", "actions", "alerts"),
    }
    judge_env = config["services"]["judge"]["environment"]
    assert judge_env["UNDERTOW_WORKER_JUDGE_BASE_URL"] == "http://vllm:8000/v1"
    assert config["services"]["actions"]["command"] == ["actions", "serve"]
    gateway_env = config["services"]["gateway"]["environment"]
    assert gateway_env["UNDERTOW_GATEWAY_UPSTREAM_BASE_URL"] == "http://vllm:8000/v1"
    assert config["services"]["vllm"]["profiles"] == ["gpu"]
    gpu = config["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_default_profile_is_the_stack_without_gpu(composecheck: Path) -> None:
    config = _config(composecheck)
    assert set(config["services"]) == {"kafka", "clickhouse", "setup"}


def test_every_published_port_is_on_loopback(composecheck: Path) -> None:
    config = _config(composecheck, *PROFILES)
    published = [
        port for service in config["services"].values() for port in service.get("ports", [])
    ]
    assert published
    assert all(port["host_ip"] == "127.0.0.1" for port in published), published


def test_secrets_come_from_the_environment(composecheck: Path) -> None:
    config = _config(composecheck, env={"CLICKHOUSE_PASSWORD": "s3cret-from-env"})
    setup_env = config["services"]["setup"]["environment"]
    assert setup_env["UNDERTOW_CLICKHOUSE_PASSWORD"] == "s3cret-from-env"
    assert config["services"]["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == (
        "s3cret-from-env"
    )
    assert setup_env["UNDERTOW_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_grafana_is_on_loopback_with_its_password_from_the_environment(
    composecheck: Path,
) -> None:
    env = {"GRAFANA_ADMIN_PASSWORD": "g-from-env", "CLICKHOUSE_PASSWORD": "s3cret-from-env"}
    grafana = _config(composecheck, "dashboards", env=env)["services"]["grafana"]
    assert grafana["profiles"] == ["dashboards"]
    assert grafana["image"].startswith("grafana/grafana-oss:1")
    assert [(p["host_ip"], p["published"], p["target"]) for p in grafana["ports"]] == [
        ("127.0.0.1", "3000", 3000)
    ]
    grafana_env = grafana["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == "g-from-env"
    assert grafana_env["CLICKHOUSE_PASSWORD"] == "s3cret-from-env"  # read by the data source
    assert "grafana-clickhouse-datasource" in grafana_env["GF_PLUGINS_PREINSTALL_SYNC"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"] == str(ROOT / "infra" / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards/undertow"] == str(
        ROOT / "infra" / "grafana" / "dashboards"
    )
    default = _config(composecheck, env=env)
    assert "grafana" not in default["services"]
