"""Refusing cross-site requests to the studio's API, and requests Gradio itself leaves unguarded.

A web page on another origin can make the user's browser POST to http://127.0.0.1:7860: the browser
sends the request (with the login cookie, which Gradio sets SameSite=None) even though the page cannot
read the answer, so a forged "start training" or "merge into /etc" would still run. Gradio's own CORS
middleware only decides which answers a page may read. This middleware refuses every state-changing
request (POST, PUT, PATCH, DELETE) that a browser marks as coming from another site: an `Origin` header
whose host differs from the `Host` the request was sent to, `Origin: null` (sandboxed frames, files), or
`Sec-Fetch-Site: cross-site`. Clients that are not browsers send no Origin and pass, as they do today
(with --auth they still need the login).

With --auth, Gradio answers a few POST routes without a login (`/gradio_api/reset`, `/cancel`,
`/stream/...`, `/run-history/...`); they need the session hash and event id the page holds, but are
refused here without a valid login cookie as well.
"""
from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_FREE_IN_GRADIO = ("/gradio_api/reset", "/gradio_api/cancel", "/gradio_api/stream/",
                        "/gradio_api/run-history/")
CROSS_SITE = ("The studio refused a request sent from another web site ({origin}): only the studio's own page "
              "may change anything. Open the studio at its own address.")


def cross_site_origin(headers: Headers) -> Optional[str]:
    """The origin to name when a browser marks the request as cross-site, else None."""
    origin = headers.get("origin")
    if origin is None:
        return "another site" if headers.get("sec-fetch-site") == "cross-site" else None
    if origin.strip().lower() == "null":
        return "null"
    netloc = urlsplit(origin.strip()).netloc.lower()
    # A reverse proxy may rewrite Host; it then says the original one in X-Forwarded-Host.
    hosts = {h.strip().lower() for h in (headers.get("host", ""), headers.get("x-forwarded-host", "")) if h}
    return None if netloc and netloc in hosts else origin


def _logged_in(scope: dict[str, Any]) -> bool:
    app = scope.get("app")
    if getattr(app, "auth", None) is None:
        return True  # no --auth: nothing to log in to
    cookies = HTTPConnection(scope).cookies
    cookie_id = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return bool(token) and token in getattr(app, "tokens", {})


class OriginGuard:
    """ASGI middleware; given to Gradio's FastAPI app through launch(app_kwargs={"middleware": [...]})."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            origin = cross_site_origin(Headers(scope=scope))
            if origin is not None:
                await JSONResponse({"error": CROSS_SITE.format(origin=origin)}, status_code=403)(scope, receive, send)
                return
            path = scope.get("path", "")
            if path.startswith(LOGIN_FREE_IN_GRADIO) and not _logged_in(scope):
                await JSONResponse({"error": "Log in first."}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
