"""``/docs`` and ``/redoc`` with their scripts served by this API, not a CDN.

FastAPI's default pages load Swagger UI and ReDoc from a public CDN without subresource
integrity: whoever controls that CDN (or the network path to it) runs script on a page
an operator opens beside the API, and an air-gapped deployment gets a blank page. The
files come instead from the ``fastapi-offline`` package, which ships the current
Swagger UI 5 (OpenAPI 3.1, which FastAPI writes) and ReDoc builds and is re-released as
they change; the version is pinned by the install, like ``plotly.js`` for the dashboard.
We serve its files through our own fixed routes (no ``StaticFiles`` mount), so every
path the app answers is a route the security suite walks.
"""

from __future__ import annotations

import functools
from importlib import resources
from importlib.metadata import version

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response

__all__ = ["DOCS_STATIC", "install_docs"]

DOCS_STATIC = "/docs/static"
_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


@functools.cache
def _asset(name: str) -> bytes:
    return (resources.files("fastapi_offline") / "static" / name).read_bytes()


def _static_route(app: FastAPI, name: str, media_type: str) -> None:
    # The package's version in the cache key: a new install is fetched anew.
    etag = f'"{version("fastapi-offline")}-{name}"'

    async def asset(request: Request) -> Response:
        headers = {
            "Cache-Control": "public, max-age=86400",
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(_asset(name), media_type=media_type, headers=headers)

    asset.__name__ = "docs_asset_" + name.replace("-", "_").replace(".", "_")
    app.add_api_route(f"{DOCS_STATIC}/{name}", asset, methods=["GET"], include_in_schema=False)


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, its OAuth2 redirect page, ``/redoc`` and their files to ``app``,
    which must be built with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )

    for name, media_type in _FILES.items():
        _static_route(app, name, media_type)
