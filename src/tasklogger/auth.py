"""The API token: who may read.

When ``settings.api_token`` is set, every request needs ``Authorization: Bearer <token>`` or the HttpOnly cookie
``tasklogger_token`` that ``POST /login`` sets (a browser's EventSource cannot send headers). The check is an ASGI
middleware, so a route added later is protected without doing anything: only the probes (``/health``,
``/livez``), the login/logout endpoints, the web page's static assets and its pages (which send a browser to the
login form themselves) are open. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .api_models import Problem

COOKIE = "tasklogger_token"
#: Largest login form accepted (a token is at most a few hundred bytes).
MAX_FORM_BYTES = 8192

#: Paths answered without a token. The web pages check the token themselves and redirect to /login.
OPEN_PATHS = frozenset({"/health", "/livez", "/login", "/logout", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/t/")


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison: the time taken does not reveal how much of a guess was right."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def credentials(headers: dict[str, str], cookies: dict[str, str]) -> str | None:
    """The token a request carries: the bearer header wins over the cookie."""
    header = headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return cookies.get(COOKIE)


class TokenMiddleware:
    """Answers 401 (JSON, ``WWW-Authenticate: Bearer``) to requests for protected paths without the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _open(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if token_matches(self.token, credentials(dict(request.headers), request.cookies)):
            await self.app(scope, receive, send)
            return
        given = "authorization" in request.headers or COOKIE in request.cookies
        detail = "invalid API token" if given else "an API token is required (Authorization: Bearer <token>)"
        response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def router(token: str | None) -> APIRouter:
    """``POST /login`` and ``POST /logout``: set and clear the cookie for browsers."""
    api = APIRouter(tags=["auth"])

    @api.post(
        "/login",
        status_code=303,
        response_class=RedirectResponse,
        responses={
            303: {"description": "token accepted, cookie set; Location: next"},
            400: {"model": Problem, "description": "form is not valid"},
            401: {"model": Problem, "description": "wrong token"},
            413: {"model": Problem, "description": "form too large"},
        },
    )
    async def login(request: Request) -> Response:
        """Check the form field ``token``; on success set the HttpOnly cookie and go to ``next`` (a local path)."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return JSONResponse({"detail": "login form too large"}, status_code=413)
        try:
            form = parse_qs(body.decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return JSONResponse({"detail": "login form is not valid"}, status_code=400)
        target = (form.get("next") or ["/"])[0]
        if not _local_path(target):
            target = "/"
        if token is None:
            return RedirectResponse(target, status_code=303)
        given = form.get("token")
        if not token_matches(token, given[0] if given else None):
            return JSONResponse({"detail": "wrong token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response = RedirectResponse(target, status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
        return response

    @api.post(
        "/logout",
        status_code=303,
        response_class=RedirectResponse,
        responses={303: {"description": "cookie cleared; Location: /login"}},
    )
    def logout() -> Response:
        """Clear the cookie and go to the login form."""
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return api


def _local_path(target: str) -> bool:
    """Whether a redirect target stays on this site (``/x``, not ``//host`` or ``/\\host``)."""
    return target.startswith("/") and not target.startswith(("//", "/\\")) and target.isprintable()
