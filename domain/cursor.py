"""Opaque watch cursors: a position in one database's change stream.

A cursor carries a tag of the database identity (stream_state.database_id), the seq of
the last event the subscriber has, and a MAC keyed with the database identity, which
never leaves the server. So a cursor cannot be edited to point elsewhere (INVALID_ARGUMENT),
while a genuine cursor of another database is recognised as such (OUT_OF_RANGE, resync).
Pure functions only: the checks against the stream's watermark and head live with the
stream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass

from domain.errors import InvalidArgument, OutOfRange
from domain.text import urlsafe_b64decode_strict

_VERSION = 1
_LAYOUT = struct.Struct(">B8sQ")  # version, database tag, seq
_MAC_BYTES = 12
_LENGTH = _LAYOUT.size + _MAC_BYTES
_MAX_TEXT = 64
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True)
class Cursor:
    database_tag: bytes
    seq: int
    mac: bytes
    body: bytes


def _tag(database_id: uuid.UUID) -> bytes:
    return hashlib.sha256(b"platform-admin/stream/" + database_id.bytes).digest()[:8]


def _mac(database_id: uuid.UUID, body: bytes) -> bytes:
    return hmac.new(database_id.bytes, body, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(database_id: uuid.UUID, seq: int) -> str:
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"seq out of range: {seq}")
    body = _LAYOUT.pack(_VERSION, _tag(database_id), seq)
    return base64.urlsafe_b64encode(body + _mac(database_id, body)).decode().rstrip("=")


def _forged() -> InvalidArgument:
    return InvalidArgument.field(
        "cursor", "is not a cursor issued by this service; resync without a cursor"
    )


def decode(text: str) -> Cursor:
    """Parses the shape of a cursor; INVALID_ARGUMENT when it is not one of ours."""
    if len(text) > _MAX_TEXT:
        raise _forged()
    try:
        raw = urlsafe_b64decode_strict(text)
    except (binascii.Error, ValueError):
        raise _forged() from None
    if len(raw) != _LENGTH or raw[0] != _VERSION:
        raise _forged()
    body, mac = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
    _, tag, seq = _LAYOUT.unpack(body)
    if seq > MAX_SEQ:
        raise _forged()
    return Cursor(database_tag=tag, seq=seq, mac=mac, body=body)


def verify(cursor: Cursor, database_id: uuid.UUID) -> int:
    """The cursor's seq, once it is known to be this database's and unaltered.

    OUT_OF_RANGE (CURSOR_EXPIRED) for a cursor of another database; INVALID_ARGUMENT for
    one whose MAC does not match (edited or made up).
    """
    if not hmac.compare_digest(cursor.database_tag, _tag(database_id)):
        raise OutOfRange(
            "the cursor belongs to another database (restored or replaced); resync without"
            " a cursor",
            reason="CURSOR_EXPIRED",
        )
    if not hmac.compare_digest(cursor.mac, _mac(database_id, cursor.body)):
        raise _forged()
    return cursor.seq


def check_position(seq: int, pruned_seq: int, head_seq: int) -> None:
    """OUT_OF_RANGE (CURSOR_EXPIRED) unless ``pruned_seq <= seq <= head_seq``."""
    if seq < pruned_seq:
        raise OutOfRange(
            f"the cursor is older than the retention period (position {seq}, oldest"
            f" resumable {pruned_seq}); resync without a cursor",
            reason="CURSOR_EXPIRED",
        )
    if seq > head_seq:
        raise OutOfRange(
            f"the cursor is ahead of this database's change stream (position {seq}, head"
            f" {head_seq}); resync without a cursor",
            reason="CURSOR_EXPIRED",
        )
