"""The ``platform-admin`` command: serve, migrate (and the operator tools beside them)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable

import grpc

from server.ops import gc_tuning, logs, workers
from server.rpc.pipeline import Authorizer
from server.security.principal import ALL_ROLES
from server.settings import Settings, SettingsError
from storage.db import Database
from storage.migrate import migrate

log = logging.getLogger("platform_admin")


def database_url(settings: Settings) -> tuple[object | None, str]:
    """DATABASE_URL when set, else the embedded PostgreSQL under the data directory."""
    if settings.database_url:
        return None, settings.database_url
    from server.ops import embedded_db

    return embedded_db.start(settings.data_dir)


def with_bus(settings: Settings) -> tuple[object | None, Settings]:
    """PLATFORM_ADMIN_NATS_URL unset: starts the embedded nats-server and points at it."""
    if settings.nats_mode != "embedded":
        return None, settings
    import atexit
    from dataclasses import replace

    from server.bus import embedded_nats

    try:
        server = embedded_nats.start(settings.data_dir)
    except (OSError, RuntimeError) as exc:
        print(f"platform-admin: cannot start the embedded nats-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    atexit.register(server.stop)
    return server, replace(settings, nats_mode="external", nats_urls=(server.url,))


async def _serve(
    settings: Settings,
    conninfo: str,
    authorizer: Authorizer,
    credentials: grpc.ServerCredentials | None = None,
    reuse_port: bool = False,
    http_ssl: ssl.SSLContext | None = None,
) -> None:
    from server.app import App

    if settings.migrate_on_start:
        applied = await migrate(conninfo)
        if applied:
            log.info("applied migrations %s", applied)
    app = App(
        settings,
        conninfo,
        authorizer=authorizer,
        credentials=credentials,
        http_ssl=http_ssl,
        reuse_port=reuse_port,
    )
    try:
        port = await app.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.http_listen, exc)
        await app.stop(grace=0)
        raise SystemExit(2) from None
    if settings.metrics_listen is not None:
        try:
            await app.metrics.start(settings.metrics_listen)
        except OSError as exc:
            log.error("cannot listen for metrics on %s: %s", settings.metrics_listen, exc)
            await app.stop(grace=0)
            raise SystemExit(2) from None
    gc_tuning.tune_for_serving()
    log.info("serving on %s (port %d)", settings.listen, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.shutdown_grace_s)
    # Health turns NOT_SERVING, new calls are refused, in-flight calls get the grace period,
    # streams end with UNAVAILABLE; metrics stay up until the end so the drain is visible.
    await app.stop()
    await app.metrics.stop()
    log.info("stopped")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from server.security import auth, tls

    # Security is settled before anything starts: an unsafe configuration never listens.
    try:
        authorizer = auth.authorizer_for(settings)
        credentials = tls.server_credentials(settings)
        http_ssl = tls.http_ssl_context(settings)
    except SettingsError as exc:
        print(f"platform-admin: {exc}", file=sys.stderr)
        return 2
    if settings.auth == "off":
        log.warning("%s", auth.DEV_MODE_WARNING)
    try:
        workers.check_port(settings)
    except SettingsError as exc:
        print(f"platform-admin: {exc}", file=sys.stderr)
        return 2
    _, conninfo = database_url(settings)
    # Like the database, the embedded bus is started once, here, and shared by the workers.
    _, settings = with_bus(settings)
    if settings.workers > 1:
        # The database is started and migrated once, here; then the workers share the port.
        if settings.migrate_on_start:
            applied = asyncio.run(migrate(conninfo))
            if applied:
                log.info("applied migrations %s", applied)
        return workers.run(settings, conninfo, serve_worker)
    asyncio.run(_serve(settings, conninfo, authorizer, credentials, http_ssl=http_ssl))
    return 0


def serve_worker(settings: Settings, conninfo: str) -> int:
    """One of several ``serve`` processes (server/ops/workers.py): same port, own resources."""
    from server.security import auth, tls

    authorizer = auth.authorizer_for(settings)
    credentials = tls.server_credentials(settings)
    http_ssl = tls.http_ssl_context(settings)
    asyncio.run(
        _serve(settings, conninfo, authorizer, credentials, reuse_port=True, http_ssl=http_ssl)
    )
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _, conninfo = database_url(settings)
    applied = asyncio.run(migrate(conninfo))
    print(f"applied: {applied or 'nothing (up to date)'}")
    return 0


MAX_TOKEN_TTL_S = 30 * 24 * 3600


def token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub", required=True, help="the principal's ULID (recorded as the actor)")
    parser.add_argument(
        "--role",
        dest="roles",
        action="append",
        required=True,
        choices=sorted(ALL_ROLES),
        help="a role; repeat for several",
    )
    parser.add_argument("--tenant", help="tenant ULID (required with --role tenant_admin)")
    parser.add_argument("--service", help="service id (required with --role service)")
    parser.add_argument(
        "--ttl", type=int, default=3600, help="lifetime in seconds (default 3600, max 30 days)"
    )


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Prints an HS256 token signed with PLATFORM_ADMIN_JWT_SECRET, checked as a server would."""
    from domain.errors import Unauthenticated
    from server.security import auth

    if not settings.jwt_secret:
        print(
            "platform-admin token: PLATFORM_ADMIN_JWT_SECRET is not set (tokens for an"
            " RS256/ES256 key come from the identity provider holding the private key)",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.ttl <= MAX_TOKEN_TTL_S:
        print(f"platform-admin token: --ttl must be 1..{MAX_TOKEN_TTL_S}", file=sys.stderr)
        return 2
    # The token is checked with the server's own key and rules before it is printed.
    audience, issuer = settings.jwt_audience, settings.jwt_issuer
    verifier = auth.TokenVerifier(auth.load_key(settings), audience, issuer)
    token = auth.mint(
        settings.jwt_secret,
        sub=args.sub,
        roles=args.roles,
        audience=audience,
        issuer=issuer,
        ttl_s=args.ttl,
        tenant_id=args.tenant,
        service_id=args.service,
    )
    try:
        verifier.verify(token)
    except Unauthenticated as exc:
        print(f"platform-admin token: {exc.message}", file=sys.stderr)
        return 2
    print(token)
    return 0


async def _prune_outbox(db: Database, settings: Settings) -> int:
    from storage import stream

    # With the bus relay on, unpublished rows are kept until the relay has published them.
    return await stream.prune(db, published_only=settings.bus_enabled)


async def _prune_health_results(db: Database, settings: Settings) -> int:
    from storage import health

    return await health.prune_results(db)


async def _prune_config_history(db: Database, settings: Settings) -> int:
    from storage import configs

    return await configs.prune_history(db)


async def _prune_inbox(db: Database, settings: Settings) -> int:
    from storage import inbox

    return await inbox.prune(db)


# Retention jobs of `platform-admin prune`, in order: name -> job(db, settings) returning
# rows removed. Each job is batched and takes its own advisory lock, so every replica may
# run it (cron).
PRUNE_JOBS: dict[str, Callable[[Database, Settings], Awaitable[int]]] = {
    "outbox": _prune_outbox,
    "health_check_results": _prune_health_results,
    "config_history": _prune_config_history,
    "inbox": _prune_inbox,
}


def prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(PRUNE_JOBS),
        help="run only this job; repeat for several (default: all)",
    )


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    _, conninfo = database_url(settings)
    chosen = [name for name in PRUNE_JOBS if not args.only or name in args.only]

    async def run() -> None:
        db = Database(settings.pool_settings(conninfo))
        await db.open()
        try:
            for name in chosen:
                removed = await PRUNE_JOBS[name](db, settings)
                print(f"{name}: removed {removed}")
        finally:
            await db.close()

    asyncio.run(run())
    return 0


COMMANDS: dict[str, tuple[str, Callable[[Settings, argparse.Namespace], int]]] = {
    "serve": ("run the gRPC server", cmd_serve),
    "migrate": ("apply pending database migrations and exit", cmd_migrate),
    "token": ("print a bearer token signed with PLATFORM_ADMIN_JWT_SECRET", cmd_token),
    "prune": ("apply retention: delete rows past their retention period", cmd_prune),
}


# Commands that take their own arguments.
ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "token": token_arguments,
    "prune": prune_arguments,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platform-admin")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name in ARGUMENTS:
            ARGUMENTS[name](command_parser)
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
