"""The web console at `/console`: pages served by Headwater itself, no build step, no CDN.

The console is static files (`static/`: one HTML page, a stylesheet, plain JavaScript modules)
that call the public API with the key the user pastes, kept in the tab's `sessionStorage` and sent
as `X-API-Key`. Everything they show is data a client sent, so the files are served under a
Content-Security-Policy that allows only this origin's own scripts and styles (no inline code, no
framing): a rendering slip in the scripts (they build every node with DOM APIs) still runs nothing.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from headwater.errors import ApiError

STATIC = Path(__file__).resolve().parent / "static"
PATH = "/console"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the package: a browser revalidates them (ETag) instead of running old scripts.
    "Cache-Control": "no-cache",
}

# The only files there are: anything else under /console/ is a 404 (no directory listing, no
# guessing a type from the platform's MIME table).
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


async def home(request: Request) -> Response:
    return RedirectResponse(f"{PATH}/", 307)


async def bare(request: Request) -> Response:
    return RedirectResponse(str(request.url.replace(path=f"{PATH}/")), 307)


async def asset(request: Request) -> Response:
    """A file of `static/` (the page itself for `/console/`), with the security headers."""
    name = request.path_params["path"] or "index.html"
    path = (STATIC / name).resolve()
    media_type = MEDIA_TYPES.get(path.suffix)
    if media_type is None or not path.is_relative_to(STATIC) or not path.is_file():
        raise ApiError(404, "no such file of the console")
    return FileResponse(path, media_type=media_type, headers=dict(HEADERS))


def routes() -> list[BaseRoute]:
    """`/` and `/console` redirect to the console's page, `/console/`; `/console/...` are its files."""
    return [
        Route("/", home, methods=["GET"]),
        Route(PATH, bare, methods=["GET"]),
        Route(PATH + "/{path:path}", asset, methods=["GET"]),
    ]
