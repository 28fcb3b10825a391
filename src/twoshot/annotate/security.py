"""Keeping other web pages away from the annotation app (an ASGI middleware).

The app listens on the user's machine and reads and writes the dataset, so any page open in
the user's browser could otherwise drive it:

- a page on another site can *send* requests to ``http://127.0.0.1:PORT`` (a form or a
  ``text/plain`` fetch needs no permission, only reading the answer does): every request
  that changes something (POST, PUT, DELETE, PATCH) must come from the app's own origin,
  which browsers state in the ``Origin`` header; a client that sends none (a script) must
  send the session token the page is served with (:data:`TOKEN_HEADER`);
- a page whose host name is made to resolve to 127.0.0.1 (DNS rebinding) is same-origin
  with itself and can read the answers: every request must name the address and port the
  app is served on in its ``Host`` header (with loopback, ``127.0.0.1``, ``localhost`` and
  ``[::1]`` are equivalent).

Refusals are JSON ``{"error": message}``: 421 for a foreign Host, 403 for a foreign Origin or
a missing or wrong token.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

TOKEN_HEADER = "X-Twoshot-Token"
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


def served_hosts(server: tuple[str, int] | None, names: Sequence[str] = ()) -> set[tuple[str, int]]:
    """The (host, port) pairs a request may name: the address the connection arrived on
    (``server``, from the ASGI scope), all loopback names when it is a loopback address, and
    ``names`` (host names the app was started with) at the same port. Host names lower case,
    IPv6 addresses without brackets."""
    if server is None:
        return set()
    host, port = server[0].lower(), int(server[1])
    hosts = {host, *(name.lower().strip("[]") for name in names)}
    if host in LOOPBACK or host.startswith("127."):
        hosts |= set(LOOPBACK)
    return {(name, port) for name in hosts}


def parse_host(value: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of a ``Host`` header or the netloc of an ``Origin`` (the scheme's default
    port when none is given); None when malformed."""
    try:
        parts = urlsplit(f"{scheme}://{value}")
        port = parts.port if parts.port is not None else DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None or parts.username is not None or parts.path or parts.query:
        return None
    return parts.hostname.lower(), port


class LocalOnly:
    """ASGI middleware refusing requests from other web pages (see the module docstring).

    app: the application to protect; token: the session token state-changing requests
    without an ``Origin`` header must carry; names: host names besides the served address
    that ``Host`` may name (e.g. the ``--host`` the app was started with).
    """

    def __init__(self, app: ASGIApp, token: str, names: Sequence[str] = ()) -> None:
        self.app = app
        self.token = token
        self.names = tuple(names)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the request must be refused, else None."""
        headers = Headers(scope=scope)
        scheme = scope.get("scheme", "http")
        allowed = served_hosts(scope.get("server"), self.names)
        host_header = headers.get("host", "")
        if parse_host(host_header, scheme) not in allowed:
            served = ", ".join(sorted(f"{h}:{p}" for h, p in allowed)) or "unknown"
            return 421, (
                f"refused: the request names host {host_header!r}, not the address this app is "
                f"served on ({served}); open the address twoshot annotate printed"
            )
        if scope["method"] not in STATE_CHANGING:
            return None
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme != scheme or parse_host(parts.netloc, parts.scheme) not in allowed:
                return 403, f"refused: a {scope['method']} from another web page (Origin {origin})"
            return None
        if not hmac.compare_digest(headers.get(TOKEN_HEADER, ""), self.token):
            return 403, (
                f"refused: a {scope['method']} without an Origin header needs the session token in "
                f"the {TOKEN_HEADER} header (the page sends both)"
            )
        return None
