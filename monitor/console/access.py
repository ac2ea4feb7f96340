"""Who may use the console, and from where.

- Bound to a loopback address it needs no token; bound to any other address it refuses to start
  without one (`ANOMON_CONSOLE_TOKEN` or `--token-file`). With a token, every route but `/healthz`,
  `/login` and the static CSS/JS needs it: the login sets an HttpOnly session cookie, scripts send
  `Authorization: Bearer <token>`.
- On a loopback address only a loopback `Host` header is served, so a web page whose name was
  re-pointed at 127.0.0.1 (DNS rebinding) gets nothing.
- A state-changing request from a browser must come from the console's own origin (`Origin`, else
  `Referer`) and carry the CSRF token of the page (double-submit: header or form field equal to the
  HttpOnly `anomon_console_csrf` cookie).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request

from model.config import ConfigError

TOKEN_ENV = "ANOMON_CONSOLE_TOKEN"
MIN_TOKEN_CHARS = 16
SESSION_COOKIE = "anomon_console_session"
CSRF_COOKIE = "anomon_console_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/healthz", "/login")
OPEN_PREFIXES = ("/static/",)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(token_file: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The console token: the file's first line, else `ANOMON_CONSOLE_TOKEN`, else None.

    Raises:
        ConfigError: the file cannot be read, or the token is shorter than MIN_TOKEN_CHARS.
    """
    environ = os.environ if environ is None else environ
    if token_file is not None:
        try:
            token: str | None = token_file.read_text().strip()
        except OSError as err:
            raise ConfigError(f"cannot read the token file {token_file}: {err.strerror}") from None
        source = f"token file {token_file}"
    else:
        token = environ.get(TOKEN_ENV, "").strip() or None
        source = TOKEN_ENV
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{source}: the token has {len(token)} characters, needs at least {MIN_TOKEN_CHARS} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token.

    Raises:
        ConfigError: naming the address and how to give a token.
    """
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--host {host} exposes the console beyond this machine: set {TOKEN_ENV} or give "
            "--token-file FILE (at least 16 characters), or bind to 127.0.0.1"
        )


class Access:
    """The token checks and the CSRF and origin rules of one console."""

    def __init__(self, token: str | None, host: str) -> None:
        self.token = token
        self.loopback_only = is_loopback(host)
        # The cookie holds a value derived from the token, not the token itself.
        self.session = (
            None
            if token is None
            else hmac.new(token.encode(), b"anomon-console-session", hashlib.sha256).hexdigest()
        )

    @property
    def required(self) -> bool:
        return self.token is not None

    def host_allowed(self, request: Request) -> bool:
        if not self.loopback_only:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.find("]")]
        return name.lower() in LOOPBACK_NAMES

    def bearer(self, request: Request) -> bool:
        """The request carries the token in `Authorization: Bearer` (a script, Prometheus)."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return self.token is not None and scheme.lower() == "bearer" and _same(given.strip(), self.token)

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return self.bearer(request) or (self.session is not None and _same(cookie, self.session))

    def open_path(self, path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def login(self, given: str) -> bool:
        return self.token is not None and _same(given.strip(), self.token)

    @staticmethod
    def csrf_token(request: Request) -> str:
        """The page's CSRF token: the cookie's, or a new one (the response then sets the cookie)."""
        return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)

    @staticmethod
    def same_origin(request: Request) -> str | None:
        """None when the request comes from this console's origin, else why not."""
        origin = request.headers.get("origin")
        if origin is None:
            referer = request.headers.get("referer")
            if referer is None:
                return "neither Origin nor Referer is set"
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        return None if origin.lower() == own.lower() else f"Origin {origin[:100]} is not {own}"

    @staticmethod
    def csrf_matches(request: Request, given: str | None) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return bool(cookie) and given is not None and _same(given, cookie)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
