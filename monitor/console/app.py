"""The console's web app (FastAPI): three pages, the JSON API under /api/, live events, metrics.

Routes are thin over the store's views. Pages are Jinja2 templates with auto-escaping; the browser
script (static/console.js) updates them from /events and writes data with textContent only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from uuid import UUID

import jinja2
from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.console.access import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, Access
from monitor.console.feedback import FeedbackPublisher
from monitor.console.live import LiveUpdates
from monitor.console.metrics import ConsoleMetrics
from monitor.console.store import ConsoleStore
from monitor.console.views import (
    THRESHOLD,
    AlertDetail,
    AlertList,
    CameraList,
    FeedbackRequest,
)
from monitor.wire import CAMERA_ID_PATTERN

HERE = Path(__file__).parent
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "all": None}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
IMAGE_HEADERS = {"Cache-Control": "private, max-age=3600", "Content-Disposition": "inline"}
CameraIdParam = Annotated[str, PathParam(pattern=CAMERA_ID_PATTERN, description="camera id")]


def create_app(
    store: ConsoleStore,
    live: LiveUpdates,
    metrics: ConsoleMetrics,
    feedback: FeedbackPublisher,
    access: Access,
    ready: Callable[[], bool],
) -> FastAPI:
    """The console app over these parts (they are started and stopped by `ConsoleServer`)."""
    app = FastAPI(
        title="anomon console",
        summary="Cameras, alerts and operator feedback of anomon, read from its Kafka topics.",
        version="1",
        docs_url=None,  # Swagger UI would load scripts from a CDN: the schema is at /api/openapi.json
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["duration"] = format_duration
    env.filters["plural"] = plural
    env.filters["iso"] = lambda value: (
        "" if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    )
    templates = Jinja2Templates(env=env)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.csrf = access.csrf_token(request)
        response = await _checked(request, call_next)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.cookies.get(CSRF_COOKIE) != request.state.csrf:
            response.set_cookie(
                CSRF_COOKIE,
                request.state.csrf,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    async def _checked(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if not access.host_allowed(request):
            return JSONResponse(
                {"detail": "this console answers to localhost and 127.0.0.1 only (it is bound to loopback)"},
                status_code=421,
            )
        if not access.open_path(path) and not access.authorized(request):
            if request.method == "GET" and (path in ("/", "/alerts") or path.startswith("/alerts/")):
                return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
            return JSONResponse(
                {"detail": "authentication required: log in at /login or send Authorization: Bearer TOKEN"},
                status_code=401,
            )
        if request.method not in ("GET", "HEAD", "OPTIONS") and not access.bearer(request):
            why = access.same_origin(request)
            if why is not None:
                return JSONResponse({"detail": f"cross-site request refused: {why}"}, status_code=403)
            if path.startswith("/api/") and not access.csrf_matches(
                request, request.headers.get(CSRF_HEADER)
            ):
                return JSONResponse(
                    {"detail": f"CSRF token missing or wrong: send the page's token in {CSRF_HEADER}"},
                    status_code=403,
                )
        return await call_next(request)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {
                "csrf": request.state.csrf,
                "logged_in": access.required,
                "threshold": THRESHOLD,
                "ready": ready(),
                **context,
            },
            status_code=status_code,
        )

    # --- pages --------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def cameras_page(request: Request) -> HTMLResponse:
        cameras = store.cameras()
        return page(request, "cameras.html", cameras=cameras, page_name="cameras")

    @app.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
    def alerts_page(
        request: Request,
        camera: str = "",
        range: str = "all",
        start: Annotated[str, Query(alias="from")] = "",
        end: Annotated[str, Query(alias="to")] = "",
        tz: int = 0,
        before: datetime | None = None,
    ) -> HTMLResponse:
        since, until = _time_filter(range, start, end, tz)
        listing = store.alerts(camera or None, since, until, _aware(before))
        return page(
            request,
            "alerts.html",
            page_name="alerts",
            listing=listing,
            cameras=store.camera_ids(),
            filters={
                "camera": camera,
                "range": range if range in RANGES else "all",
                "from": start,
                "to": end,
            },
            since=since,
            until=until,
            paged=before is not None,
            next_url=_next_url(request, listing),
        )

    @app.get("/alerts/{alert_id}", response_class=HTMLResponse, include_in_schema=False)
    def alert_page(request: Request, alert_id: UUID) -> HTMLResponse:
        detail = store.alert_detail(alert_id)
        if detail is None:
            return page(request, "missing.html", status_code=404, page_name="alerts", alert_id=alert_id)
        return page(request, "alert.html", page_name="alert", alert=detail)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> Response:
        if not access.required:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", page_name="login", next=_local(next), error=None)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(
        request: Request,
        token: Annotated[str, Form()] = "",
        csrf_token: Annotated[str, Form(alias=CSRF_FIELD)] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        if not access.csrf_matches(request, csrf_token):
            return page(
                request, "login.html", 403, page_name="login", next=_local(next), error="expired form"
            )
        if not access.login(token):
            return page(request, "login.html", 401, page_name="login", next=_local(next), error="wrong token")
        response = RedirectResponse(_local(next), status_code=303)
        assert access.session is not None
        response.set_cookie(
            SESSION_COOKIE,
            access.session,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf_token: Annotated[str, Form(alias=CSRF_FIELD)] = "") -> Response:
        if not access.csrf_matches(request, csrf_token):
            raise HTTPException(403, "CSRF token missing or wrong")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # --- the JSON API --------------------------------------------------------------------------------

    @app.get("/api/cameras", tags=["cameras"])
    def list_cameras() -> CameraList:
        """Every camera seen on the topics: state, latest score and thumbnail, recent scores."""
        return CameraList(cameras=store.cameras())

    @app.get("/api/cameras/{camera_id}/thumbnail", tags=["cameras"], response_class=Response)
    def camera_thumbnail(camera_id: CameraIdParam) -> Response:
        """The camera's latest thumbnail (JPEG, heatmap and boxes drawn)."""
        image = store.thumbnail(camera_id)
        if image is None:
            raise HTTPException(404, f"no thumbnail of camera {camera_id} yet")
        return Response(image[1], media_type=image[0], headers=IMAGE_HEADERS)

    @app.get("/api/alerts", tags=["alerts"])
    def list_alerts(
        camera: Annotated[str | None, Query(description="only this camera")] = None,
        since: Annotated[datetime | None, Query(description="started at or after (RFC 3339)")] = None,
        until: Annotated[datetime | None, Query(description="started before (RFC 3339)")] = None,
        before: Annotated[datetime | None, Query(description="the previous page's next_before")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> AlertList:
        """Alerts, newest first, a page at a time."""
        return store.alerts(camera, _aware(since), _aware(until), _aware(before), limit)

    @app.get("/api/alerts/{alert_id}", tags=["alerts"])
    def get_alert(alert_id: UUID) -> AlertDetail:
        """One alert: its lifecycle events, its score curve and its feedback."""
        detail = store.alert_detail(alert_id)
        if detail is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return detail

    @app.get("/api/alerts/{alert_id}/snapshot", tags=["alerts"], response_class=Response)
    def alert_snapshot(alert_id: UUID) -> Response:
        """The alert's peak frame (JPEG, heatmap and boxes drawn)."""
        image = store.snapshot(alert_id)
        if image is None:
            raise HTTPException(404, f"no snapshot of alert {alert_id}")
        return Response(image[1], media_type=image[0], headers=IMAGE_HEADERS)

    @app.post("/api/alerts/{alert_id}/feedback", tags=["alerts"])
    def give_feedback(alert_id: UUID, body: FeedbackRequest) -> AlertDetail:
        """Acknowledge an alert or mark it a false alarm or real: stored, then published to the
        feedback topic. Browsers send the page's CSRF token in X-CSRF-Token."""
        if feedback.give(alert_id, body.verdict, body.note) is None:
            raise HTTPException(404, f"no alert {alert_id}")
        detail = store.alert_detail(alert_id)
        assert detail is not None
        return detail

    # --- live updates, metrics, health ---------------------------------------------------------------

    @app.get("/events", include_in_schema=False)
    async def events() -> StreamingResponse:
        async def stream() -> Any:
            metrics.live_clients.inc()
            try:
                async for chunk in live.stream():
                    yield chunk
            finally:
                metrics.live_clients.dec()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        ok = ready()
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    return app


def format_duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def plural(count: int, noun: str) -> str:
    """1 alert, 2 alerts, 1 box, 3 boxes."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}{'es' if noun.endswith('x') else 's'}"


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _time_filter(
    range_: str, start: str, end: str, tz_offset_minutes: int
) -> tuple[datetime | None, datetime | None]:
    """The [since, until) of the alerts page: datetime-local inputs (the browser's local time, given
    as JavaScript's getTimezoneOffset) win over the quick range."""
    local = timedelta(minutes=tz_offset_minutes)

    def parse(text: str) -> datetime | None:
        try:
            return datetime.fromisoformat(text).replace(tzinfo=UTC) + local if text else None
        except ValueError:
            return None

    since, until = parse(start), parse(end)
    if since is None and until is None and RANGES.get(range_) is not None:
        span = RANGES[range_]
        assert span is not None
        since = datetime.now(UTC) - span
    return since, until


def _local(target: str) -> str:
    """Only a path on this console (no open redirect to another site)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def _next_url(request: Request, listing: AlertList) -> str | None:
    if listing.next_before is None:
        return None
    params = dict(request.query_params)
    params["before"] = json.loads(listing.model_dump_json())["next_before"]
    return "/alerts?" + "&".join(f"{quote(k)}={quote(str(v))}" for k, v in params.items())
