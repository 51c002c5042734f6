"""The console in headless chromium against a real ``platform-admin serve`` with auth on.

Each test does what an operator would: signs in with a pasted token, looks, clicks; the
server's state is checked with grpcurl, the way an operator would double-check it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from playwright.sync_api import expect

from tests.auth_helpers import ADMIN, READER, TENANT_ADMIN_A, Caller
from tests.browser_helpers import (
    Console,
    ProbeTarget,
    screenshot,
    sign_in,
    start_console,
    stop_server,
)
from tests.helpers import TENANT_A, TENANT_B

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WRONG_KEY = Caller("forged", ADMIN.sub, ("platform_admin",))


@pytest.fixture(scope="module")
def console(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    running = start_console(module_db, tmp_path_factory.mktemp("console"), auth=True)
    try:
        yield running
    finally:
        stop_server(running.server)


def test_sign_in_with_a_pasted_token(page: Any, console: Console) -> None:
    page.goto(f"{console.base}/")
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#dev-banner")).to_be_hidden()
    assert page.locator("#main").inner_text() == ""
    # A token signed with another key is refused with the server's reason.
    forged = jwt.encode(WRONG_KEY.claims(), "another-secret-of-at-least-32-bytes!!", "HS256")
    page.fill("#token", forged)
    page.click("#sign-in-button")
    expect(page.locator("#sign-in-error")).to_contain_text("signature")
    sign_in(page, console, ADMIN)
    expect(page.locator("#sign-in")).to_be_hidden()
    expect(page.locator("#main h1")).to_have_text("Platform health")
    # Kept in this tab's sessionStorage only: not in the URL, not in a cookie.
    stored = page.evaluate("sessionStorage.getItem('platform-admin.token')")
    assert stored and stored.count(".") == 2
    assert stored not in page.url
    assert page.context.cookies() == []
    page.reload()
    expect(page.locator("#who")).to_contain_text("platform_admin")
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def _status(page: Any, service_id: str) -> Any:
    return page.locator(f'tr[data-source="{service_id}"] td.source-status')


def test_source_turns_unhealthy_and_recovers_live(
    page: Any, console: Console, probe_target: ProbeTarget
) -> None:
    console.grpc(
        "HealthService/CreateHealthSource",
        {
            "service_id": "checkout-web",
            "health_url": probe_target.url,
            "check_interval_s": 1,
            "failure_threshold": 1,
            "success_threshold": 1,
        },
        ADMIN,
    )
    # A second source beside it, so the page (and its screenshot) shows more than one row.
    console.grpc(
        "HealthService/CreateHealthSource",
        {"service_id": "ledger-api", "health_url": probe_target.url, "check_interval_s": 2},
        ADMIN,
    )
    sign_in(page, console, ADMIN, "#/health")
    expect(_status(page, "checkout-web")).to_contain_text("HEALTHY")
    page.wait_for_function("() => document.body.dataset.live === 'on'")
    page.evaluate("window.notReloaded = true")
    probe_target.status = 503
    expect(_status(page, "checkout-web")).to_contain_text("UNHEALTHY")
    row = page.locator('tr[data-source="checkout-web"]')
    expect(row.locator("td.details")).to_contain_text("HTTP status 503")
    expect(page.locator("#platform-status")).to_contain_text("UNHEALTHY")
    down_since = page.locator("#platform-since").inner_text()
    assert down_since.startswith("since 20")
    probe_target.status = 200
    expect(_status(page, "checkout-web")).to_have_text("HEALTHY")
    expect(page.locator("#platform-status .status")).to_have_text("HEALTHY")
    # Healthy again since the recovery, not since before the outage.
    assert page.locator("#platform-since").inner_text() > down_since
    # Both changes arrived over the event stream: the page was never reloaded.
    assert page.evaluate("window.notReloaded") is True
    # The chart shows the unhealthy stretch between healthy ones.
    expect(row.locator('svg.chart rect[fill="#cf222e"]').first).to_be_attached()
    expect(row.locator('svg.chart rect[fill="#1a7f37"]').first).to_be_attached()
    expect(row.locator("svg.chart polyline")).to_have_count(1)
    screenshot(page, "console-health.png")


def _evaluate(console: Console, key: str, tenant: str) -> dict[str, Any]:
    answer: dict[str, Any] = console.grpc(
        "FlagService/EvaluateFlag", {"key": key, "tenant_id": tenant}, ADMIN
    )
    return answer


def test_toggle_a_flag_for_a_tenant_and_evaluate_agrees(page: Any, console: Console) -> None:
    for key, description in (
        ("checkout.redesign", "New checkout flow"),
        ("search.semantic", "Semantic search ranking"),
        ("billing.invoices_v2", "Second-generation invoice PDFs"),
    ):
        console.grpc("FlagService/CreateFlag", {"key": key, "description": description}, ADMIN)
    sign_in(page, console, ADMIN, "#/flags")
    # The list follows the change stream too: a flag created elsewhere appears by itself.
    page.wait_for_function("() => document.body.dataset.live === 'on'")
    console.grpc("FlagService/CreateFlag", {"key": "live.added"}, ADMIN)
    expect(page.locator('tr[data-flag="live.added"]')).to_be_visible()
    page.fill("#flag-search", "redesign")
    expect(page.locator("#flag-count")).to_contain_text("1 of")
    # A live re-draw keeps the operator's search.
    console.grpc("FlagService/CreateFlag", {"key": "live.second"}, ADMIN)
    expect(page.locator('tr[data-flag="live.second"]')).to_be_attached()
    expect(page.locator('tr[data-flag="live.second"]')).to_be_hidden()
    expect(page.locator("#flag-search")).to_have_value("redesign")
    expect(page.locator("#flag-count")).to_contain_text("1 of")
    page.click('tr[data-flag="checkout.redesign"] a')
    expect(page.locator("#flag h1")).to_have_text("checkout.redesign")
    # A malformed tenant id: the server's field error, next to the field.
    page.fill("#tenant-input", "not-a-tenant")
    page.click("#add-tenant button[type=submit]")
    expect(page.locator('#add-tenant .field-error[data-field="tenant_id"]')).to_contain_text("ULID")
    page.fill("#tenant-input", TENANT_A)
    page.select_option("#tenant-override", "TENANT_OVERRIDE_ENABLED")
    page.click("#add-tenant button[type=submit]")
    expect(page.locator("#enabled-tenants")).to_contain_text(TENANT_A)
    assert _evaluate(console, "checkout.redesign", TENANT_A) == {
        "enabled": True,
        "reason": "EVALUATION_REASON_TENANT_ENABLED",
    }
    # Tenant B follows the default (off; grpcurl prints no false values).
    assert _evaluate(console, "checkout.redesign", TENANT_B) == {
        "reason": "EVALUATION_REASON_DEFAULT"
    }
    page.click(f'#enabled-tenants li[data-tenant="{TENANT_A}"] button.remove')
    expect(page.locator("#flag")).to_contain_text("Enabled for (0)")
    assert _evaluate(console, "checkout.redesign", TENANT_A) == {
        "reason": "EVALUATION_REASON_DEFAULT"
    }
    page.click("#toggle-default")
    expect(page.locator("#flag-default strong")).to_have_text("on")
    assert _evaluate(console, "checkout.redesign", TENANT_B)["enabled"] is True
    page.fill("#tenant-input", TENANT_B)
    page.select_option("#tenant-override", "TENANT_OVERRIDE_DISABLED")
    page.click("#add-tenant button[type=submit]")
    expect(page.locator("#disabled-tenants")).to_contain_text(TENANT_B)
    assert _evaluate(console, "checkout.redesign", TENANT_B) == {
        "reason": "EVALUATION_REASON_TENANT_DISABLED"
    }
    # Archive, then restore: archived flags evaluate off and take no toggles until restored.
    page.click("#archive")
    expect(page.locator("#flag h1")).to_contain_text("archived")
    assert page.locator("#toggle-default, #add-tenant").count() == 0
    assert _evaluate(console, "checkout.redesign", TENANT_A) == {
        "reason": "EVALUATION_REASON_ARCHIVED"
    }
    page.goto(f"{console.base}/#/flags")
    expect(page.locator('tr[data-flag="checkout.redesign"]')).to_be_hidden()
    page.check("#show-archived")
    expect(page.locator('tr[data-flag="checkout.redesign"]')).to_contain_text("archived")
    page.click('tr[data-flag="checkout.redesign"] a')
    page.click("#archive")  # "Restore"
    expect(page.locator("#toggle-default")).to_be_visible()
    assert _evaluate(console, "checkout.redesign", TENANT_A)["enabled"] is True
    # The list counts follow, and it is the page shown in the README.
    page.goto(f"{console.base}/#/flags")
    row = page.locator('tr[data-flag="checkout.redesign"]')
    expect(row.locator("td").nth(1)).to_have_text("on")
    expect(row.locator("td").nth(3)).to_have_text("1")
    screenshot(page, "console-flags.png")


def test_losing_an_etag_race_shows_the_conflict_and_the_new_state(
    page: Any, console: Console
) -> None:
    console.grpc("FlagService/CreateFlag", {"key": "race.flag"}, ADMIN)
    sign_in(page, console, ADMIN, "#/flags/race.flag")
    expect(page.locator("#flag")).to_have_attribute("data-etag", "1")
    expect(page.locator("#flag-default strong")).to_have_text("off")
    # Someone else turns it on with grpcurl while the page still shows etag 1.
    console.grpc(
        "FlagService/UpdateFlag",
        {
            "key": "race.flag",
            "default_enabled": True,
            "update_mask": {"paths": ["default_enabled"]},
            "etag": "1",
        },
        ADMIN,
    )
    page.click("#toggle-default")  # "Turn default on", sent with etag 1
    expect(page.locator("#notice.conflict")).to_contain_text("Someone else changed this flag")
    expect(page.locator("#notice")).to_contain_text("not applied")
    expect(page.locator("#flag")).to_have_attribute("data-etag", "2")
    expect(page.locator("#flag-default strong")).to_have_text("on")
    stored = console.grpc("FlagService/GetFlag", {"key": "race.flag"}, ADMIN)["flag"]
    assert stored["default_enabled"] is True and stored["etag"] == "2"


def test_out_of_bounds_config_shows_the_field_error_and_history_row(
    page: Any, console: Console
) -> None:
    key = "global.password_min_length"
    sign_in(page, console, ADMIN, "#/configs")
    expect(page.locator("#config-keys")).to_contain_text(key)
    page.select_option("#set-key", key)
    page.select_option("#set-scope", "CONFIG_SCOPE_TENANT")
    page.fill("#set-tenant", TENANT_A)
    page.fill("#set-value", "3")
    page.click("#set-submit")
    error = page.locator('#set-form .field-error[data-field="value"]')
    expect(error).to_contain_text("8")
    listed = console.grpc(
        "ConfigService/ListConfigs", {"scope": "CONFIG_SCOPE_TENANT", "tenant_id": TENANT_A}, ADMIN
    )
    assert listed.get("configs", []) == []  # nothing written
    page.fill("#set-value", "16")
    page.click("#set-submit")
    expect(page.locator("#notice")).to_contain_text("Saved")
    expect(error).to_have_text("")
    row = page.locator(f'#config-rows tr[data-key="{key}"][data-tenant="{TENANT_A}"]')
    expect(row.locator("td.value")).to_have_text("16")
    row.locator("button.edit").click()
    page.fill("#set-value", "20")
    page.click("#set-submit")
    expect(row.locator("td.value")).to_have_text("20")
    row.locator("button.history").click()
    history = page.locator("#history-rows tbody tr")
    expect(history).to_have_count(2)
    newest = history.nth(0)
    expect(newest.locator("td.old")).to_have_text("16")
    expect(newest.locator("td.new")).to_have_text("20")
    expect(newest.locator("td.actor")).to_have_text(ADMIN.sub)
    expect(history.nth(1).locator("td.old")).to_have_text("—")
    expect(history.nth(1).locator("td.new")).to_have_text("16")
    expect(page.locator("#config-history")).not_to_contain_text("null")
    assert page.locator("#history-older").count() == 0  # one page only
    # History is paginated: 21 more writes (sent as the page sends them), 20 per page.
    page.evaluate(
        """async (tenant) => {
            const token = sessionStorage.getItem('platform-admin.token');
            const headers = {'Content-Type': 'application/json', Authorization: 'Bearer ' + token};
            for (let i = 0; i < 21; i++) {
              const body = JSON.stringify({key: 'global.session_idle_minutes',
                scope: 'CONFIG_SCOPE_TENANT', tenantId: tenant,
                value: {intValue: String(100 + i)}});
              const r = await fetch('/api/v1/ConfigService/SetConfig',
                                    {method: 'POST', headers, body});
              if (!r.ok) throw new Error(await r.text());
            }
        }""",
        TENANT_A,
    )
    page.click("#filter-form button[type=submit]")
    idle = page.locator(
        f'#config-rows tr[data-key="global.session_idle_minutes"][data-tenant="{TENANT_A}"]'
    )
    expect(idle.locator("td.value")).to_have_text("120")
    idle.locator("button.history").click()
    expect(history).to_have_count(20)
    expect(history.nth(0).locator("td.new")).to_have_text("120")
    page.click("#history-older")
    expect(history).to_have_count(1)
    expect(history.nth(0).locator("td.new")).to_have_text("100")
    row.locator("button.history").click()
    expect(history).to_have_count(2)
    # The effective value for the tenant names the scope it came from.
    page.select_option("#resolve-key", key)
    page.fill("#resolve-tenant", TENANT_A)
    page.click("#resolve-form button[type=submit]")
    expect(page.locator("#resolved")).to_have_text("20 (from TENANT)")
    screenshot(page, "console-configs.png")


def test_reader_sees_no_edit_controls_and_its_write_is_refused(page: Any, console: Console) -> None:
    console.grpc("FlagService/CreateFlag", {"key": "reader.flag"}, ADMIN)
    sign_in(page, console, READER, "#/flags/reader.flag")
    expect(page.locator("#flag h1")).to_have_text("reader.flag")
    for control in ("#toggle-default", "#archive", "#add-tenant", "button.remove"):
        assert page.locator(control).count() == 0, control
    expect(page.locator("#flag")).not_to_contain_text("null")
    page.goto(f"{console.base}/#/configs")
    expect(page.locator("#config-keys")).to_be_visible()
    expect(page.locator("#config-values table, #config-values p")).to_be_visible()
    assert page.locator("#set-form").count() == 0
    assert page.locator("button.edit").count() == 0
    # The request the hidden button would send, sent anyway: refused by the policy.
    answer = page.evaluate(
        """async () => {
            const r = await fetch('/api/v1/FlagService/UpdateFlag', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        Authorization: 'Bearer ' + sessionStorage.getItem('platform-admin.token')},
              body: JSON.stringify({key: 'reader.flag', defaultEnabled: true, etag: '1'})});
            return {status: r.status, body: await r.json()};
        }"""
    )
    assert answer["status"] == 403
    assert answer["body"]["error"]["code"] == "PERMISSION_DENIED"
    stored = console.grpc("FlagService/GetFlag", {"key": "reader.flag"}, ADMIN)["flag"]
    assert stored["etag"] == "1" and "default_enabled" not in stored


def test_tenant_admin_sees_only_its_tenant_config_rows(page: Any, console: Console) -> None:
    for tenant, minutes in ((TENANT_A, 15), (TENANT_B, 45)):
        console.grpc(
            "ConfigService/SetConfig",
            {
                "key": "global.session_idle_minutes",
                "scope": "CONFIG_SCOPE_TENANT",
                "tenant_id": tenant,
                "value": {"int_value": minutes},
            },
            ADMIN,
        )
    sign_in(page, console, TENANT_ADMIN_A, "#/configs")
    expect(page.locator("#config-rows")).to_be_visible()
    tenants = page.locator("#config-rows tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.tenant)"
    )
    assert tenants and set(tenants) == {TENANT_A}
    expect(page.locator("#config-rows")).not_to_contain_text(TENANT_B)
    # Pages its role cannot read are not offered.
    expect(page.locator('nav a[data-page="flags"]')).to_be_hidden()
    expect(page.locator('nav a[data-page="health"]')).to_be_hidden()
    # Its own rows it may edit; only at TENANT scope, for its tenant.
    assert page.locator("#set-scope option").all_inner_texts() == ["TENANT"]


def test_script_in_stored_text_shows_as_text(page: Any, console: Console) -> None:
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    console.grpc("FlagService/CreateFlag", {"key": "xss.probe", "description": hostile}, ADMIN)
    source = console.grpc(
        "HealthService/CreateHealthSource",
        {
            "service_id": "xss-source",
            "health_url": "http://127.0.0.1:9/never",
            "check_interval_s": 3600,
        },
        ADMIN,
    )["source"]
    # After the prober's first check (the next is an hour away), so this result stays last.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = console.grpc("HealthService/GetPlatformHealth", {}, ADMIN)
        mine = [s for s in health.get("sources", []) if s["source_id"] == source["id"]]
        if mine and mine[0].get("last_check_time"):
            break
        time.sleep(0.2)
    console.grpc(
        "HealthService/RecordCheckResult",
        {
            "source_id": source["id"],
            "status": "HEALTH_STATUS_DEGRADED",
            "details": {"error": hostile},
        },
        ADMIN,
    )
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, console, ADMIN, "#/flags/xss.probe")
    expect(page.locator("#flag-description")).to_have_text(hostile)
    assert page.locator("#flag-description *").count() == 0
    page.goto(f"{console.base}/#/flags")
    expect(page.locator('tr[data-flag="xss.probe"]')).to_contain_text("<script>")
    page.goto(f"{console.base}/#/health")
    details = page.locator('tr[data-source="xss-source"] td.details')
    expect(details).to_contain_text(hostile)
    assert details.locator("img, script").count() == 0
    time.sleep(0.5)
    assert page.evaluate("window.pwned") is None
    assert dialogs == []


def test_the_readme_screenshots_are_committed() -> None:
    """The README shows these three; ``CONSOLE_SCREENSHOTS_DIR=docs`` refreshes them."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    for name in ("console-health.png", "console-flags.png", "console-configs.png"):
        assert (docs / name).stat().st_size > 10_000, name
        assert f"docs/{name}" in (docs.parent / "README.md").read_text()
