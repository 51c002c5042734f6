"""For operators: `platform-admin serve` refuses unsafe starts, `token` mints usable tokens."""

from __future__ import annotations

import os
import subprocess

import pytest

from server.settings import is_loopback
from tests.auth_helpers import SECRET
from tests.grpcurl_server import PLATFORM_ADMIN, ROOT, free_port, start_server, stop_server
from tests.helpers import TENANT_A, TENANT_B

pytestmark = pytest.mark.grpcurl

CONFIG = "platform_admin.v1.ConfigService"
SUB = "01JAD0000000000000000CMD99"
PWD = "global.password_min_length"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATFORM_ADMIN_")}
    env.update(extra)
    return env


def server_env(**extra: str) -> dict[str, str]:
    """Overrides for start_server (which sets DATABASE_URL itself): no inherited keys."""
    blank = ("JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWT_ISSUER", "JWT_AUDIENCE", "AUTH")
    return {**{f"PLATFORM_ADMIN_{name}": "" for name in blank}, **extra}


def platform_admin(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLATFORM_ADMIN, *args],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def token(*args: str) -> str:
    done = platform_admin("token", *args, PLATFORM_ADMIN_JWT_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"PLATFORM_ADMIN_AUTH": "off", "PLATFORM_ADMIN_JWT_SECRET": SECRET},
    ],
    ids=["no keys", "auth explicitly off"],
)
def test_serve_refuses_a_non_loopback_address_without_authentication(db_url, env):
    # The check happens before anything listens: nothing is bound on 0.0.0.0 here.
    done = platform_admin(
        "serve",
        DATABASE_URL=db_url,
        PLATFORM_ADMIN_LISTEN=f"0.0.0.0:{free_port()}",
        PLATFORM_ADMIN_WORKERS="1",
        **env,
    )
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "PLATFORM_ADMIN_JWT_SECRET" in done.stderr
    assert "serving on" not in done.stderr


@pytest.mark.parametrize(
    "host", ["127.corp.example", "127.0.0.1.nip.io", "localhost.example", "[::2]", "0.0.0.0"]
)
def test_serve_refuses_names_that_only_look_like_loopback(db_url, host):
    # A prefix test took any name starting with "127." for loopback, authentication off.
    done = platform_admin(
        "serve",
        DATABASE_URL=db_url,
        PLATFORM_ADMIN_LISTEN=f"{host}:{free_port()}",
        PLATFORM_ADMIN_WORKERS="1",
    )
    assert done.returncode == 2, done.stderr
    assert f"refusing to listen on {host}" in done.stderr
    assert "serving on" not in done.stderr


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.8.9.10:1", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("127.corp.example:1", False),
        ("127.0.0.1.evil:1", False),
        ("1270.0.0.1:1", False),
        ("[::1]x:1", False),
        ("::1", False),
        ("127.0.0.1", False),
    ],
)
def test_loopback_is_a_parsed_address(listen, loopback):
    assert is_loopback(listen) is loopback


def test_serve_refuses_auth_jwt_without_a_key(db_url):
    done = platform_admin("serve", DATABASE_URL=db_url, PLATFORM_ADMIN_AUTH="jwt")
    assert done.returncode == 2
    assert "PLATFORM_ADMIN_AUTH=jwt needs PLATFORM_ADMIN_JWT_SECRET" in done.stderr


def test_serve_on_loopback_without_keys_is_dev_mode_and_says_so(db_url, tmp_path):
    server = start_server(db_url, tmp_path, env=server_env())
    try:
        log = server.log()
        assert "WARNING" in log and "AUTHENTICATION IS OFF" in log
        # Dev mode: no token needed.
        keys = server.call(f"{CONFIG}/ListConfigKeys")
        assert len(keys["keys"]) == 9
    finally:
        assert stop_server(server) == 0


def test_tokens_from_the_token_command_are_accepted_by_the_server(db_url, tmp_path, sql):
    server = start_server(db_url, tmp_path, env=server_env(PLATFORM_ADMIN_JWT_SECRET=SECRET))
    try:
        assert "AUTHENTICATION IS OFF" not in server.log()
        admin = {"authorization": f"Bearer {token('--sub', SUB, '--role', 'platform_admin')}"}
        tenant = {
            "authorization": "Bearer "
            + token("--sub", SUB, "--role", "tenant_admin", "--tenant", TENANT_A, "--ttl", "60")
        }
        row = {"key": PWD, "scope": "CONFIG_SCOPE_TENANT", "tenant_id": TENANT_A}

        refused = server.grpcurl(f"{CONFIG}/ListConfigKeys")
        assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
        server.call(f"{CONFIG}/SetConfig", {**row, "value": {"int_value": 16}}, headers=admin)
        got = server.call(f"{CONFIG}/GetConfig", row, headers=tenant)
        assert got["config"]["value"]["int_value"] == "16"
        history = server.call(f"{CONFIG}/ListConfigHistory", row, headers=tenant)
        assert [e["changed_by"] for e in history["entries"]] == [SUB]
        # ... written to this test's database, by that principal.
        stored = sql.execute("SELECT changed_by FROM config_history").fetchall()
        assert stored == [(SUB,)]

        other = server.grpcurl(
            f"{CONFIG}/GetConfig", {**row, "tenant_id": TENANT_B}, headers=tenant
        )
        assert other.returncode != 0 and "NotFound" in other.stderr
        denied = server.grpcurl("platform_admin.v1.FlagService/ListFlags", {}, headers=tenant)
        assert denied.returncode != 0 and "PermissionDenied" in denied.stderr
        # Health and reflection stay open for probes and discovery.
        assert CONFIG in server.grpcurl("list").stdout
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--sub", SUB, "--role", "platform_admin"], {}, "PLATFORM_ADMIN_JWT_SECRET is not set"),
        (["--sub", "alice", "--role", "platform_admin"], None, "ULID"),
        (["--sub", SUB, "--role", "tenant_admin"], None, "tenant_id"),
        (["--sub", SUB, "--role", "service"], None, "service_id"),
        (["--sub", SUB, "--role", "platform_admin", "--ttl", "0"], None, "--ttl"),
        (["--sub", SUB, "--role", "root"], None, "invalid choice"),
    ],
)
def test_token_command_refuses_what_a_server_would_refuse(args, env, message):
    done = platform_admin(
        "token", *args, **({"PLATFORM_ADMIN_JWT_SECRET": SECRET} if env is None else env)
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
