"""platform-admin flags and configs answered in process, kept current by the watch streams.

``Client`` is the whole API; see its docstring and the repository README's "Client
library" section. Evaluation and resolution are the server's own rules (``domain``).
"""

from domain.config_keys import Scope
from domain.flags import Evaluation, Reason
from platform_admin_client.client import Client, Resolution
from platform_admin_client.errors import ServerError, UnknownKey
from platform_admin_client.health import Heartbeats
from platform_admin_client.runner import LoopThread
from platform_admin_client.state import State
from platform_admin_client.store import Change

__all__ = [
    "Change",
    "Client",
    "Evaluation",
    "Heartbeats",
    "LoopThread",
    "Reason",
    "Resolution",
    "Scope",
    "ServerError",
    "State",
    "UnknownKey",
]
