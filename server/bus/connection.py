"""A nats-py connection from the settings, and the JetStream streams this service owns.

Everything that talks to NATS goes through nats-py (the maintained client); this module
is where the settings (URLs, credentials, TLS) become its options, and where the relay's
stream and the inbox stream are created or brought up to date.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from domain import inbox_events as inbox_rules
from server.settings import Settings

log = logging.getLogger(__name__)

# The relay's subjects: every outbox subject starts with this.
RELAY_SUBJECTS = ["platform_admin.>"]
CONNECT_TIMEOUT_S = 2
RECONNECT_WAIT_S = 0.5


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca_file or settings.nats_tls_cert_file):
        if any(url.startswith("tls://") for url in settings.nats_urls):
            return ssl.create_default_context()
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca_file)
    if settings.nats_tls_cert_file and settings.nats_tls_key_file:
        context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    return context


async def connect(
    settings: Settings,
    name: str,
    on_change: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connects to the configured servers; nats-py reconnects by itself from then on.

    ``on_change`` runs at every disconnect, reconnect and close (the health status).
    Raises when no server answers (the caller retries with back-off).
    """

    async def changed() -> None:
        if on_change is not None:
            await on_change()

    async def error(exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    options: dict[str, Any] = {
        "servers": list(settings.nats_urls),
        "name": name,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "reconnect_time_wait": RECONNECT_WAIT_S,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "disconnected_cb": changed,
        "reconnected_cb": changed,
        "closed_cb": changed,
        "error_cb": error,
    }
    tls = _tls(settings)
    if tls is not None:
        options["tls"] = tls
    if settings.nats_creds_file:
        options["user_credentials"] = settings.nats_creds_file
    if settings.nats_token:
        options["token"] = settings.nats_token
    return await nats.connect(**options)


async def ensure_relay_stream(js: JetStreamContext, settings: Settings) -> None:
    """Creates the relay's stream, or updates its subjects and duplicate window.

    File storage, so a restarted nats-server keeps what was published. Other settings
    an operator gave the stream (limits, replicas) are kept on update.
    """
    name = settings.nats_stream
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=RELAY_SUBJECTS,
                storage=StorageType.FILE,
                duplicate_window=settings.nats_duplicate_window_s,
                description="platform-admin changes (outbox relay)",
            )
        )
        log.info("created JetStream stream %s", name)
        return
    config = info.config
    if config.subjects != RELAY_SUBJECTS or config.duplicate_window != (
        settings.nats_duplicate_window_s
    ):
        config.subjects = RELAY_SUBJECTS
        config.duplicate_window = settings.nats_duplicate_window_s
        await js.update_stream(config)
        log.info("updated JetStream stream %s", name)


async def ensure_inbox_stream(js: JetStreamContext, settings: Settings) -> None:
    """Creates the inbox stream if it does not exist (an existing one is left as it is)."""
    try:
        await js.stream_info(settings.inbox_stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=settings.inbox_stream,
                subjects=list(inbox_rules.SUBJECTS),
                storage=StorageType.FILE,
                duplicate_window=settings.nats_duplicate_window_s,
                description="events platform-admin consumes (inbox)",
            )
        )
        log.info("created JetStream stream %s", settings.inbox_stream)
