"""The Grafana provisioning in infra/grafana: the data source and dashboard provider parse, point
at the compose services and mounts that exist, and every dashboard panel uses that data source
and reads the analyst views (schemas/clickhouse/013_analyst_views.sql). The dashboards' SQL runs
against a real warehouse in tests/integration/test_analyst_views.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "infra" / "grafana"
PROVISIONING = GRAFANA / "provisioning"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PLUGIN = "grafana-clickhouse-datasource"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _compose_grafana() -> dict[str, Any]:
    service: dict[str, Any] = _yaml(ROOT / "docker-compose.yml")["services"]["grafana"]
    return service


def _mounts() -> dict[str, Path]:
    """Container path to repo path of the grafana service's bind mounts."""
    mounts: dict[str, Path] = {}
    for volume in _compose_grafana()["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = ROOT / source
    return mounts


def _views() -> set[str]:
    sql = (ROOT / "schemas" / "clickhouse" / "013_analyst_views.sql").read_text(encoding="utf-8")
    return set(re.findall(r"CREATE OR REPLACE VIEW (\w+)", sql))


def test_the_data_source_is_the_compose_clickhouse_with_credentials_from_env() -> None:
    [source] = _yaml(PROVISIONING / "datasources" / "clickhouse.yaml")["datasources"]
    assert source["type"] == PLUGIN
    data = source["jsonData"]
    assert (data["host"], data["port"], data["protocol"]) == ("clickhouse", 8123, "http")
    assert data["username"] == "${CLICKHOUSE_USER}"
    assert source["secureJsonData"]["password"] == "${CLICKHOUSE_PASSWORD}"
    environment = _compose_grafana()["environment"]
    for name in ("CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"):
        assert environment[name].startswith("${" + name), (name, environment[name])
    assert "clickhouse" in _yaml(ROOT / "docker-compose.yml")["services"]


def test_the_provisioning_and_dashboard_folders_are_mounted_where_grafana_reads_them() -> None:
    mounts = _mounts()
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    [provider] = _yaml(PROVISIONING / "dashboards" / "undertow.yaml")["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path in mounts, (path, sorted(mounts))
    assert sorted(mounts[path].glob("*.json")) == DASHBOARDS
    assert len(DASHBOARDS) == 4


def test_the_compose_service_installs_the_plugin_and_publishes_on_loopback_only() -> None:
    service = _compose_grafana()
    assert re.fullmatch(r"grafana/grafana-oss:1[12]\.\d+\.\d+", service["image"])
    assert service["profiles"] == ["dashboards"]
    assert all(str(port).startswith("127.0.0.1:") for port in service["ports"])
    assert PLUGIN in service["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    password = service["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD"), password


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_every_panel_queries_the_views_through_the_provisioned_source(path: Path) -> None:
    [source] = _yaml(PROVISIONING / "datasources" / "clickhouse.yaml")["datasources"]
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"]
    views = _views()
    targets = [t for p in board["panels"] for t in p.get("targets", [])]
    assert targets
    for target in targets:
        assert target["datasource"] == {"type": PLUGIN, "uid": source["uid"]}
        assert target["editorType"] == "sql"
        tables = set(
            re.findall(r"\b(?:FROM|(?<!ARRAY )JOIN)\s+(\w+)", target["rawSql"], flags=re.I)
        )
        assert tables and tables <= views, (target["rawSql"], tables - views)
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == source["uid"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
