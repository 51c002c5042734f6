"""The client tests' server: heartbeats every half second so STALE and READY show quickly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.settings import Settings
from tests.client.support import HEARTBEAT_S
from tests.conftest import TEST_SETTINGS


@pytest.fixture
def settings() -> Settings:
    return replace(TEST_SETTINGS, watch_heartbeat_s=HEARTBEAT_S)
