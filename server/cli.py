"""The ``platform-admin`` command: serve, migrate (and the operator tools beside them)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from server import logs
from server.settings import Settings, SettingsError
from storage.migrate import migrate

log = logging.getLogger("platform_admin")


def database_url(settings: Settings) -> tuple[object | None, str]:
    """DATABASE_URL when set, else the embedded PostgreSQL under the data directory."""
    if settings.database_url:
        return None, settings.database_url
    from server import embedded_db

    return embedded_db.start(settings.data_dir)


async def _serve(settings: Settings, conninfo: str) -> None:
    from server.app import App

    if settings.migrate_on_start:
        applied = await migrate(conninfo)
        if applied:
            log.info("applied migrations %s", applied)
    app = App(settings, conninfo)
    port = await app.start()
    log.info("serving on %s (port %d)", settings.listen, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.shutdown_grace_s)
    await app.stop()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    _, conninfo = database_url(settings)
    asyncio.run(_serve(settings, conninfo))
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _, conninfo = database_url(settings)
    applied = asyncio.run(migrate(conninfo))
    print(f"applied: {applied or 'nothing (up to date)'}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[Settings, argparse.Namespace], int]]] = {
    "serve": ("run the gRPC server", cmd_serve),
    "migrate": ("apply pending database migrations and exit", cmd_migrate),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platform-admin")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"platform-admin: invalid setting: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    return COMMANDS[args.command][1](settings, args)


if __name__ == "__main__":
    sys.exit(main())
