"""The dashboard's ASGI app: HTML shells, their JSON APIs, and the static files they load.

:func:`create_app` takes its sources explicitly: a factory of warehouse clients (the app keeps
a small pool of them, one per concurrent request) and a registry loader. Pages are Jinja2
templates (autoescaped) that name their page; ``static/ui.js`` fetches ``/api/<page>`` every
``refresh_s`` seconds and draws with plotly.js, which the app serves from the ``plotly``
package at ``/static/plotly.min.js``, so the browser loads nothing from elsewhere. A strict
Content-Security-Policy (scripts from this origin only) backs up the rule that texts are
rendered with ``textContent``, never as HTML.

>>> app = create_app(lambda: None, RegistryState)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from undertow.errors import UndertowError
from undertow.services.ui import UIError
from undertow.services.ui import queries as Q
from undertow.services.ui.queries import QueryError, TraceFilter
from undertow.services.ui.registry_page import registry_view
from undertow.services.ui.series import Window

if TYPE_CHECKING:  # the loader's type only: the dashboard imports no Kafka client itself
    from undertow.services.registry.client import RegistryLoader

log = logging.getLogger("undertow.services.ui")

HERE = Path(__file__).parent
RangeName = Literal["15m", "1h", "6h", "24h", "7d", "30d"]
TRACE_ID = re.compile(r"^[0-9A-Za-z_.:-]{1,128}$")
PAGES = ("overview", "drift", "alerts", "traces", "registry")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
WarehouseFactory = Callable[[], Any]


class _Clients:
    """Warehouse clients for concurrent requests: one per request at a time, kept for reuse
    (clickhouse-connect clients must not run two queries at once)."""

    def __init__(self, factory: WarehouseFactory, keep: int = 4) -> None:
        self._factory = factory
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue(maxsize=keep)

    @contextmanager
    def client(self) -> Iterator[Any]:
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            try:
                client = self._factory()
            except UndertowError as exc:
                raise QueryError(f"cannot reach the warehouse: {exc}") from exc
        ok = False
        try:
            yield client
            ok = True
        finally:
            if ok:
                try:
                    self._idle.put_nowait(client)
                except queue.Full:
                    client.close()
            else:  # a failed client may be half-way through a response: drop it
                _close(client)

    def close(self) -> None:
        while True:
            try:
                _close(self._idle.get_nowait())
            except queue.Empty:
                return


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing is best effort
        log.debug("closing a warehouse client failed", exc_info=True)


class _PlotlyJS:
    """plotly.js from the ``plotly`` package, read once on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self.etag = ""

    def body(self) -> bytes:
        with self._lock:
            if self._body is None:
                try:
                    from plotly.offline import get_plotlyjs
                except ImportError as exc:
                    raise UIError(
                        "the dashboard draws with plotly.js from the plotly package: "
                        "pip install 'undertow[ui]'"
                    ) from exc
                self._body = get_plotlyjs().encode("utf-8")
                self.etag = '"' + hashlib.sha256(self._body).hexdigest()[:32] + '"'
            return self._body


def create_app(
    warehouse: WarehouseFactory,
    registry: RegistryLoader,
    *,
    refresh_s: float = 5.0,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The dashboard over ``warehouse()`` clients (clickhouse-connect, on the Undertow
    database) and ``registry()`` states; pages refresh their data every ``refresh_s``."""
    app = FastAPI(title="Undertow", docs_url=None, redoc_url=None, openapi_url=None)
    clients = _Clients(warehouse)
    plotly = _PlotlyJS()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.router.on_shutdown.append(clients.close)

    def window(range_: str) -> Window:
        return Window.last(range_, now_ms=int(clock() * 1000))

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(UIError)
    async def ui_error(_: Request, exc: UIError) -> JSONResponse:
        status = 502 if isinstance(exc, QueryError) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(UndertowError)
    async def source_error(_: Request, exc: UndertowError) -> JSONResponse:
        # The registry's reader (Kafka) or another source is away: say so, keep serving.
        return JSONResponse({"error": f"a data source failed: {exc}"}, status_code=503)

    def page(request: Request, name: str, **context: Any) -> Response:
        return templates.TemplateResponse(
            request,
            f"{name}.html",
            {"page": name, "pages": PAGES, "refresh_ms": int(refresh_s * 1000), **context},
        )

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/overview")

    @app.get("/overview", include_in_schema=False)
    def overview_page(request: Request) -> Response:
        return page(request, "overview")

    @app.get("/drift", include_in_schema=False)
    def drift_page(request: Request) -> Response:
        return page(request, "drift")

    @app.get("/alerts", include_in_schema=False)
    def alerts_page(request: Request) -> Response:
        return page(request, "alerts")

    @app.get("/traces", include_in_schema=False)
    def traces_page(request: Request) -> Response:
        return page(request, "traces")

    @app.get("/traces/{trace_id}", include_in_schema=False)
    def trace_page(request: Request, trace_id: str) -> Response:
        if not TRACE_ID.match(trace_id):
            return JSONResponse({"error": "expected a trace id of letters, digits, ._:-"}, 400)
        return page(request, "trace", trace_id=trace_id)

    @app.get("/registry", include_in_schema=False)
    def registry_page(request: Request) -> Response:
        return page(request, "registry")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js(request: Request) -> Response:
        body = plotly.body()
        headers = {"ETag": plotly.etag, "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == plotly.etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/api/overview")
    def api_overview(range: RangeName = "1h", app_: Annotated[str, Query(alias="app")] = "") -> Any:
        with clients.client() as client:
            return Q.overview(client, window(range), app_)

    @app.get("/api/facets")
    def api_facets(range: RangeName = "24h") -> Any:
        with clients.client() as client:
            return Q.facets(client, window(range))

    @app.get("/api/drift")
    def api_drift(range: RangeName = "24h", app_: Annotated[str, Query(alias="app")] = "") -> Any:
        with clients.client() as client:
            return Q.drift(client, window(range), app_)

    @app.get("/api/alerts")
    def api_alerts(
        range: RangeName = "7d",
        app_: Annotated[str, Query(alias="app")] = "",
        status: Literal["", "firing", "resolved"] = "",
        severity: Literal["", "critical", "error", "warning", "info"] = "",
    ) -> Any:
        with clients.client() as client:
            return Q.alerts(client, window(range), app=app_, status=status, severity=severity)

    @app.get("/api/traces")
    def api_traces(
        range: RangeName = "1h",
        app_: Annotated[str, Query(alias="app", max_length=200)] = "",
        model: Annotated[str, Query(max_length=200)] = "",
        trace: Annotated[str, Query(max_length=128)] = "",
        min_toxicity: Annotated[float, Query(ge=0, le=1)] = 0.0,
        min_injection: Annotated[float, Query(ge=0, le=1)] = 0.0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        where = TraceFilter(
            app=app_,
            model=model,
            trace_prefix=trace.strip(),
            min_toxicity=min_toxicity,
            min_injection=min_injection,
            limit=limit,
        )
        with clients.client() as client:
            return Q.traces(client, window(range), where)

    @app.get("/api/traces/{trace_id}")
    def api_trace(trace_id: str) -> Any:
        if not TRACE_ID.match(trace_id):
            raise UIError(
                f"expected a trace id of letters, digits, ._:- (got {len(trace_id)} chars)"
            )
        with clients.client() as client:
            found = Q.trace(client, trace_id)
        if not found["found"]:
            return JSONResponse({"error": f"no trace {trace_id} in the warehouse"}, 404)
        return found

    @app.get("/api/registry")
    def api_registry() -> Any:
        return registry_view(registry())

    return app
