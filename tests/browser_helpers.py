"""Headless chromium (Debian's package, driven by Playwright) against a real ``serve`` process.

The browser is the system one (``CHROMIUM``, default /usr/bin/chromium; ``make test-browser``
installs it when missing); Playwright never downloads one. Each test gets a fresh browser
context (so a fresh sessionStorage) and fails if the page logged an error, which is how a
Content-Security-Policy violation or a script exception shows up.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api
import pytest

from tests.auth_helpers import SECRET, Caller, sign
from tests.grpcurl_server import ROOT, RunningServer, free_port, start_server, stop_server
from tests.pg import DatabaseFactory

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCRATCH = Path(tempfile.gettempdir()) / "platform-admin-console-screenshots"
# Generous for a loaded 2-core machine; a live update normally lands within a second or two.
WAIT_MS = 20_000
playwright_api.expect.set_options(timeout=WAIT_MS)


@dataclass
class Console:
    """A running server with its HTTP listener, and a way to call it as an operator would."""

    server: RunningServer
    base: str
    auth: bool

    def grpc(self, method: str, data: dict[str, Any], caller: Caller | None = None) -> Any:
        headers = {"authorization": f"Bearer {token(caller)}"} if caller and self.auth else None
        return self.server.call(f"platform_admin.v1.{method}", data, headers=headers)


def token(caller: Caller) -> str:
    return sign(caller.claims(ttl_s=1800))


def start_console(db_url: str, tmp: Path, auth: bool, **env: str) -> Console:
    port = free_port()
    settings = {
        "PLATFORM_ADMIN_HTTP_LISTEN": f"127.0.0.1:{port}",
        # The prober must reach the test's own endpoints on loopback.
        "PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS": "127.0.0.0/8",
        "PLATFORM_ADMIN_PROBE_POLL_S": "0.2",
        **env,
    }
    if auth:
        settings["PLATFORM_ADMIN_JWT_SECRET"] = SECRET
    server = start_server(db_url, tmp, env=settings)
    return Console(server, f"http://127.0.0.1:{port}", auth)


@pytest.fixture(scope="module")
def module_db(databases: DatabaseFactory) -> Iterator[str]:
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: run `make test-browser` (installs Debian's chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class PageErrors:
    messages: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors = PageErrors()
    tab.on("pageerror", lambda exc: errors.messages.append(f"page error: {exc}"))

    def on_console(message: Any) -> None:
        # 401/403 answers the tests provoke on purpose are logged by chromium as resource
        # errors; anything else (a CSP violation, an exception) fails the test.
        if message.type == "error" and "status of 40" not in message.text:
            errors.messages.append(f"console: {message.text}")

    tab.on("console", on_console)
    yield tab
    context.close()
    assert not errors.messages, errors.messages


def sign_in(page: Any, console: Console, caller: Caller, hash_: str = "") -> None:
    page.goto(f"{console.base}/{hash_}")
    page.fill("#token", token(caller))
    page.click("#sign-in-button")
    playwright_api.expect(page.locator("#who")).to_contain_text(caller.roles[0])


def rendered(page: Any) -> None:
    """Waits for the current page's data to be drawn."""
    page.wait_for_function("() => document.body.dataset.rendered !== undefined")


def screenshot(page: Any, name: str) -> None:
    """Taken on every run; written to docs/ (the README's images) only when asked, with
    ``CONSOLE_SCREENSHOTS_DIR=docs make test-browser``, so a test run leaves the tree clean."""
    target = Path(os.environ.get("CONSOLE_SCREENSHOTS_DIR") or SCRATCH)
    if not target.is_absolute():
        target = ROOT / target
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / name), full_page=True)
    assert (target / name).stat().st_size > 10_000, "a screenshot of an empty page"


class ProbeTarget:
    """A loopback HTTP endpoint the server's prober checks; ``status`` is what it answers."""

    def __init__(self) -> None:
        self.status = 200
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"status": "ok"}' if target.status < 300 else b"down"
                self.send_response(target.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/healthz"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def probe_target() -> Iterator[ProbeTarget]:
    target = ProbeTarget()
    yield target
    target.close()


__all__ = ["stop_server"]
