"""Strict text checks shared by every validator that reads caller-supplied strings.

Two traps these close: ``re.match`` with ``$`` accepts a trailing newline (so patterns are
applied with ``fullmatch``), and ``base64.urlsafe_b64decode`` silently drops characters
outside its alphabet (so ``"<token>\\n"`` would decode like the token itself).
"""

from __future__ import annotations

import base64
import re

# C0 controls, DEL and C1 controls: nothing a caller types into prose needs them, and a
# terminal, log viewer or mail header that later shows the text may interpret them.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Prose (descriptions) may span lines and be indented; every other control is refused.
_PROSE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_URLSAFE_B64_RE = re.compile(r"[A-Za-z0-9_-]*")


def has_control(value: str) -> bool:
    """True if ``value`` holds any control character (newline and tab included)."""
    return _CONTROL_RE.search(value) is not None


def has_prose_control(value: str) -> bool:
    """True if ``value`` holds a control character other than newline and tab."""
    return _PROSE_CONTROL_RE.search(value) is not None


def urlsafe_b64decode_strict(text: str) -> bytes:
    """Decodes unpadded URL-safe base64; ValueError on any character outside the alphabet."""
    if _URLSAFE_B64_RE.fullmatch(text) is None:
        raise ValueError("not URL-safe base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
