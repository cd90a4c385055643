"""The dashboard's HTTP surface (services/ui/app.py) without a warehouse: pages, static files,
headers, the registry API over a real RegistryState, and how failures are answered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from undertow.services.bus import BusError
from undertow.services.registry.state import RegistryState, promote_model, push_model
from undertow.services.ui.app import create_app
from undertow.services.warehouse import WarehouseError


def unreachable_warehouse() -> Any:
    raise WarehouseError("cannot connect to ClickHouse at http://127.0.0.1:1")


def registry_with_model() -> RegistryState:
    state = RegistryState()
    for record in push_model(state, "support", base_model="smol", now=1):
        state.apply(record)
    for record in promote_model(state, "support", "1", now=2):
        state.apply(record)
    return state


def client(registry: Callable[[], RegistryState] = RegistryState) -> TestClient:
    return TestClient(create_app(unreachable_warehouse, registry, refresh_s=3))


@pytest.mark.parametrize("page", ["overview", "drift", "alerts", "traces", "registry"])
def test_pages_are_shells_that_load_local_scripts_only(page: str) -> None:
    response = client().get(f"/{page}")
    assert response.status_code == 200
    html = response.text
    assert f'data-page="{page}"' in html and 'data-refresh-ms="3000"' in html
    scripts = [s.split('"')[0] for s in html.split('<script src="')[1:]]
    assert scripts == ["/static/plotly.min.js", "/static/ui.js"]
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "default-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_root_goes_to_the_overview() -> None:
    response = client().get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/overview"


def test_plotly_comes_from_the_plotly_package_with_an_etag() -> None:
    from plotly.offline import get_plotlyjs

    http = client()
    response = http.get("/static/plotly.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.text == get_plotlyjs()
    again = http.get("/static/plotly.min.js", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_static_files_are_served() -> None:
    http = client()
    for name in ("ui.js", "ui.css", "favicon.svg"):
        assert http.get(f"/static/{name}").status_code == 200, name


def test_a_trace_page_accepts_only_trace_like_ids() -> None:
    http = client()
    good = http.get("/traces/" + "ab" * 16)
    assert good.status_code == 200 and 'data-trace-id="' + "ab" * 16 + '"' in good.text
    bad = http.get("/traces/%3Cscript%3E")
    assert bad.status_code == 400 and "<script>" not in bad.text
    assert http.get("/api/traces/%3Cb%3E").status_code == 400


def test_the_registry_api_reads_the_loader() -> None:
    response = client(registry_with_model).get("/api/registry")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    [model] = response.json()["models"]
    assert (model["name"], model["active_version"]) == ("support", "1")


def test_a_failing_source_is_reported_not_raised() -> None:
    def broker_away() -> RegistryState:
        raise BusError("reading undertow.registry.v1 from 127.0.0.1:1: timed out")

    registry = client(broker_away).get("/api/registry")
    assert registry.status_code == 503 and "registry.v1" in registry.json()["error"]
    warehouse = client().get("/api/overview?range=1h")
    assert warehouse.status_code == 502
    assert "cannot reach the warehouse" in warehouse.json()["error"]


def test_query_arguments_are_validated() -> None:
    http = client()
    assert http.get("/api/overview?range=2h").status_code == 422
    assert http.get("/api/alerts?status=open").status_code == 422
    assert http.get("/api/traces?min_toxicity=2").status_code == 422
    assert http.get("/api/traces?limit=0").status_code == 422
