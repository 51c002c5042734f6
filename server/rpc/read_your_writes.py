"""What the Config and Flag servicers share: storage, the watch, and read-your-writes.

A write returns its change event (storage/); the servicer hands it to the in-memory read
model at once (server/changes/read_model.py), so this process answers with the new state
from the next call on, without waiting for the change stream.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from domain.events import ConfigChanged, FlagChanged
from server.changes.read_model import ReadModel
from server.security import principal as principal_ctx
from storage.db import Database

W = TypeVar("W")
C = TypeVar("C", FlagChanged, ConfigChanged)


class ReadYourWrites(Generic[W]):
    def __init__(
        self, db: Database, watch: W | None = None, read_model: ReadModel | None = None
    ) -> None:
        self.db = db
        self.watch = watch
        # Hot reads answer from memory when set; writes feed it.
        self.read_model = read_model

    def _wrote(self, change: C) -> C:
        if self.read_model is not None:
            self.read_model.apply(change)
        return change

    def _actor(self) -> str | None:
        """Who is writing (the caller's subject), recorded in history and outbox headers."""
        return principal_ctx.current().subject
