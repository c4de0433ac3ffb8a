"""The app's side of a shared instance (core.engine.visitors): who a request comes from, that visitor's engine, and
the HTTP guard that keeps one visitor's files from every other.

Who: a visitor signed in with Hugging Face (the OAuth session of a Space with ``hf_oauth: true``) is their login
name; anyone else is their browser, by a random HttpOnly cookie this module's middleware hands out on the first
request (``tune_arena_visitor``); an API client that keeps no cookies is its Gradio session. Every handler of the
tabs asks ``scoped(engine, request)`` for the engine to work with: the instance's own engine on a single-user app,
the visitor's view of it on a shared one.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from core.engine import Engine
from core.engine.visitors import Visitor, Visitors
from core.errors import ConfigError

VISITOR_COOKIE = "tune_arena_visitor"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
FILE_ROUTES = ("/file=", "/file/")  # Gradio's file route, with and without its /gradio_api prefix


def signed_in_name(session: Any) -> str | None:
    """The Hugging Face login name in a Gradio OAuth session (``scope["session"]``), unless it has expired."""
    if not isinstance(session, dict):
        return None
    info = session.get("oauth_info")
    if not isinstance(info, dict):
        return None
    expires = info.get("expires_at")
    if isinstance(expires, int | float) and expires < time.time():
        return None
    name = (info.get("userinfo") or {}).get("preferred_username")
    return name if isinstance(name, str) and name else None


def _cookie(headers: Any, name: str = VISITOR_COOKIE) -> str | None:
    """The value of cookie ``name`` in raw ASGI headers (a list of (bytes, bytes))."""
    for key, value in headers or ():
        if key.lower() == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header counts as none
                continue
            if name in jar and jar[name].value:
                return jar[name].value
    return None


def visitor_of(request: Any) -> Visitor:
    """The visitor a Gradio request (``gr.Request``) comes from: signed in, else their cookie, else the session."""
    http = getattr(request, "request", None)  # the Starlette request under gr.Request
    scope = getattr(http, "scope", None) or {}
    name = signed_in_name(scope.get("session")) or getattr(request, "username", None)
    if name:
        return Visitor.signed_in_as(name)
    token = _cookie(scope.get("headers")) or getattr(request, "session_hash", None)
    return Visitor.anonymous(token or "")


def scoped(engine: Engine, request: Any) -> Engine:
    """The engine a handler works with: ``engine`` itself on a single-user app, else the requesting visitor's."""
    if engine.visitors is None:
        return engine
    if request is None:
        raise ConfigError("visitor: this shared app needs a browser session to keep your work apart from others'")
    return engine.visitors.engine(visitor_of(request))


def file_route_targets(path: str) -> list[str]:
    """Every file a request path could ask Gradio's file route for: the rest of the path after each ``/file=`` and
    each ``/file/`` in it (Gradio's router takes the first marker after its own prefix, which a guard cannot know
    for a mounted app: ``/gradio_api/file/x/file=/../../a`` is read by ``/file/`` as ``x/file=/../../a``, a file
    other than the one after ``/file=``). Empty for any other path."""
    targets = []
    for marker in FILE_ROUTES:
        at = path.find(marker)
        while at != -1:
            targets.append(path[at + len(marker):])
            at = path.find(marker, at + 1)
    return targets


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class VisitorMiddleware:
    """ASGI middleware of a shared instance: a visitor cookie for every browser that has none, and Gradio's file
    route refused (404) for any file under the instance's workspaces that is not the asking visitor's own,
    whatever the spelling of its path (``..``, ``//``, a link: it is resolved as Gradio resolves it, then
    further)."""

    def __init__(self, app: Callable, *, visitors: Visitors, secure: bool = False) -> None:
        self.app = app
        self.visitors = visitors
        self.secure = secure

    def protected_roots(self) -> list[Path]:
        roots = [self.visitors.instance_root]
        if self.visitors.settings.persistent is not None:
            roots.append(self.visitors.settings.persistent)
        return [root.resolve() for root in roots]

    def allowed(self, target: str, scope: dict) -> bool:
        """May the sender of ``scope`` read ``target`` through the file route?"""
        try:
            resolved = Path(os.path.abspath(target)).resolve()
        except (OSError, ValueError):
            return False
        if not any(_inside(resolved, root) for root in self.protected_roots()):
            return True  # not ours to guard: Gradio's own rules apply (its cache, its uploads)
        name = signed_in_name(scope.get("session"))
        token = _cookie(scope.get("headers"))
        if not name and not token:
            return False
        visitor = Visitor.signed_in_as(name) if name else Visitor.anonymous(token)
        return _inside(resolved, self.visitors.folder(visitor).resolve())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        targets = file_route_targets(scope.get("path", ""))
        if not all(self.allowed(target, scope) for target in targets):
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"Not found"})
            return
        if _cookie(scope.get("headers")) is not None:
            await self.app(scope, receive, send)
            return
        # A Space runs in huggingface.co's iframe, where browsers block third-party cookies unless they are
        # partitioned (CHIPS): then the cookie is kept per embedding site, else the visitor is their Gradio session.
        attributes = "; Secure; SameSite=None; Partitioned" if self.secure else "; SameSite=Lax"
        header = (f"{VISITOR_COOKIE}={secrets.token_urlsafe(24)}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly"
                  f"{attributes}").encode("latin-1")

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)
