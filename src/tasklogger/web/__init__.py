"""The web page: task list (``/``), task view (``/t/{task_id}``), login form (``/login``) and ``/static/*``.

Pages are rendered on the server (``pages.py``); a small amount of plain JavaScript (``static/*.js``) polls the
task list, draws the timeline and follows a running task over the SSE endpoint. Nothing is fetched from another
origin, and every page carries a Content-Security-Policy that forbids it, and inline scripts, outright.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..config import Settings
from ..errors import UnsafeTaskId
from ..projector import FINAL_RESULT, INPUT, METADATA
from ..reader import TaskDir, TaskNotFound
from . import pages

if TYPE_CHECKING:
    from ..api import Runtime

#: Name of the HttpOnly cookie that ``POST /login`` sets (shared with the API's authentication).
COOKIE = "tasklogger_token"

#: Static assets shipped with the package: name -> media type. Only these names are ever served.
ASSETS = {
    "app.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "task.js": "text/javascript; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: Task data is untrusted: even if an escape were ever missed, the browser runs no inline or foreign script.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Asset:
    """One static file, loaded once, with its ETag."""

    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Read the shipped assets from the package data."""
    folder = resources.files(__name__).joinpath("static")
    out: dict[str, Asset] = {}
    for name, media_type in ASSETS.items():
        body = folder.joinpath(name).read_bytes()
        out[name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return out


def router(runtime: Runtime) -> APIRouter:
    """The routes of the web page over ``runtime`` (include after the API routes)."""
    web = APIRouter(include_in_schema=False)
    settings = runtime.settings
    assets = load_assets()
    # Cache-busting query of the asset URLs: changes whenever any shipped asset does.
    version = hashlib.sha256("".join(a.etag for a in assets.values()).encode()).hexdigest()[:12]

    auth_on = settings.api_token is not None

    @web.get("/", response_class=HTMLResponse)
    def task_list(request: Request) -> Response:
        """The task list: filters, search, live-updating rows."""
        if not authorized(settings, request):
            return to_login(request)
        return html(pages.task_list(dict(request.query_params), version=version, auth=auth_on))

    @web.get("/t/{task_id}", response_class=HTMLResponse)
    def task_view(request: Request, task_id: str) -> Response:
        """One task: header, timeline (live while it runs), per-tool breakdown, final result."""
        if not authorized(settings, request):
            return to_login(request)
        return task_page(settings, task_id, version=version, auth=auth_on)

    @web.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        """The form that posts the API token to ``POST /login``."""
        if not auth_on:
            return RedirectResponse("/", status_code=303)
        return html(pages.login(next if _local_path(next) else "/", version=version))

    @web.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        """A shipped asset; any other name is 404 (no path ever reaches the filesystem)."""
        asset = assets.get(name)
        if asset is None:
            return Response(b"not found", status_code=404, media_type="text/plain")
        headers = {"ETag": asset.etag, "Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    return web


def authorized(settings: Settings, request: Request) -> bool:
    """Whether the request carries the API token (cookie or bearer header), or none is required."""
    expected = settings.api_token
    if expected is None:
        return True
    given = request.cookies.get(COOKIE)
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        given = header[7:].strip()
    # Constant-time: the comparison must not reveal how much of a guess was right.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def to_login(request: Request) -> RedirectResponse:
    """A browser without credentials goes to the login form, which brings it back here."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def html(body: str, status: int = 200) -> HTMLResponse:
    """An HTML page with the security headers."""
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def task_page(settings: Settings, task_id: str, *, version: str, auth: bool) -> HTMLResponse:
    """The task view; 400 for an unsafe id; 404 (a page that waits for the task) for one not seen yet."""
    try:
        with TaskDir(settings.logs_dir, task_id) as task:
            metadata, given, final = task.json(METADATA), task.json(INPUT), task.json(FINAL_RESULT)
    except UnsafeTaskId as exc:
        return html(pages.problem(f"Not a valid task id: {exc.detail}", version=version, auth=auth), 400)
    except TaskNotFound:
        # The task may not exist *yet* (a link shared as it was created): the page waits for it.
        return html(pages.task_view(task_id, None, None, None, version=version, auth=auth), 404)
    return html(pages.task_view(task_id, metadata, given, final, version=version, auth=auth))


def _local_path(target: str) -> bool:
    """Whether a redirect target stays on this site (``/x``, not ``//host`` or ``/\\host``)."""
    return target.startswith("/") and not target.startswith(("//", "/\\"))
