"""Route registrar for the console: the pages, their static files and the event stream.

The pages are plain files in static/ (HTML, one script, one stylesheet; the chart is drawn
by that script as SVG): no build step, no CDN, nothing fetched at run time, so ``make run``
serves them as they are in the repository and they work offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from server.console.live import LiveHints

if TYPE_CHECKING:
    from server.app import App

STATIC = Path(__file__).resolve().parent / "static"


def register(application: web.Application, app: App) -> None:
    hints = LiveHints(app)
    app.http.on_stop.append(hints.close)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    application.router.add_get("/", index)
    application.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    application.router.add_get("/api/v1/events", hints.stream)
