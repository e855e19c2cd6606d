"""The dashboard in headless Chromium against a real control plane: pages show what the
API says, its buttons change state through the API, and deployment state updates live."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from tests.ui.conftest import SIGNATURE, Dashboard, open_page, screenshot, sha

LIVE_TIMEOUT_MS = 15_000  # the page polls every 2 s; a busy machine gets plenty of slack


def wait_until(what: str, check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- routing and shells (plain HTTP) ----------------------------------------------------


def test_ui_paths_answer_html_not_problem_json(dashboard: Dashboard) -> None:
    base = dashboard.cp.url
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/ui").status_code == 307
        assert http.get("/ui", follow_redirects=True).url.path == "/ui/"
        for path in (
            "/ui/nope",
            "/ui/models/Not_A_Slug",
            "/ui/models/resnet/versions/0",
            "/ui/static/missing.js",
            "/ui/deployments/a/b",
        ):
            r = http.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("text/html"), path
            assert "Not found" in r.text
        posted = http.post("/ui/models")
        assert posted.status_code == 405 and posted.headers["content-type"].startswith("text/html")
        assert set(posted.headers["allow"].split(", ")) == {"GET", "HEAD"}
        api = http.get("/api/v1/nope")
        assert api.headers["content-type"].startswith("application/problem+json")
        assert not [p for p in http.get("/openapi.json").json()["paths"] if p.startswith("/ui")]
        css = http.get("/ui/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_pages_are_shells_that_render_no_registry_data(dashboard: Dashboard) -> None:
    """With auth on, anyone may load a page; only the key's own API calls fetch data."""
    digest = sha(dashboard.files["resnet", 1]["model.pt"])
    with httpx.Client(base_url=dashboard.cp.url, timeout=10) as http:
        assert http.get("/api/v1/models").status_code == 401  # auth is on
        for path in (
            "/ui/",
            "/ui/models",
            "/ui/models/resnet",
            "/ui/models/resnet/versions/1",
            "/ui/deployments",
            "/ui/deployments/resnet-prod",
            "/ui/events",
        ):
            r = http.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in r.headers["content-security-policy"]
            for secret in (digest, "catalogue-2026-10", "ResNet-50", "classification"):
                assert secret not in r.text, (path, secret)
            assert 'href="/docs"' in r.text and 'href="/redoc"' in r.text


# -- pages in the browser ----------------------------------------------------------------


def test_overview_shows_deployments_models_and_recent_events(
    page: Any, dashboard: Dashboard
) -> None:
    page.goto(f"{dashboard.ui}/")
    row = page.locator('#deployments tr[data-deployment="resnet-prod"]')
    deployment = dashboard.get("/deployments/resnet-prod")
    assert row.locator("td.status").inner_text() == deployment["status"]
    assert f"v{deployment['version']}" in row.inner_text()
    models = page.locator("#models tr[data-model]")
    models.first.wait_for()
    assert sorted(models.evaluate_all("rows => rows.map(r => r.dataset.model)")) == [
        "bert-small",
        "resnet",
    ]
    newest = dashboard.get("/events", order="desc", limit=1)["items"][0]
    first_event = page.locator("#events tr[data-event]").first
    assert first_event.get_attribute("data-event") == str(newest["id"])
    assert page.locator("#docs-link").get_attribute("href") == "/docs"
    assert page.locator("#redoc-link").get_attribute("href") == "/redoc"
    screenshot(page, "overview")


def test_deployments_page_lists_every_deployment_with_its_status(
    page: Any, dashboard: Dashboard
) -> None:
    page.goto(f"{dashboard.ui}/deployments")
    expected = {d["name"]: d for d in dashboard.get("/deployments")["items"]}
    page.locator("#deployments tr[data-deployment]").first.wait_for()
    rows = page.locator("#deployments tr[data-deployment]")
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.deployment)")) == set(expected)
    for name, d in expected.items():
        row = page.locator(f'#deployments tr[data-deployment="{name}"]')
        assert row.locator("td.status").inner_text() == d["status"]
        assert f"{d['observed']['ready_replicas']}/{d['replicas']}" in row.inner_text()


def test_models_page_lists_versions_and_aliases(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.ui}/models")
    row = page.locator('#models tr[data-model="resnet"]')
    row.wait_for()
    versions = dashboard.get("/models/resnet/versions")["items"]
    assert row.locator("td.num").first.inner_text() == str(len(versions))
    aliases = {a["alias"]: a["version"] for a in dashboard.get("/models/resnet/aliases")["items"]}
    chips = row.locator("td.aliases a.chip").all_inner_texts()
    shown = [re.fullmatch(r"(\S+) → v(\d+)", text) for text in chips]
    assert {m[1]: int(m[2]) for m in shown if m} == aliases and all(shown)
    page.fill("#model-q", "bert")
    page.click("#model-search button")
    page.locator('#models tr[data-model="resnet"]').wait_for(state="detached")
    assert page.locator("#models tr[data-model]").count() == 1
    screenshot(page, "models")


def test_model_page_shows_versions_aliases_and_history(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.ui}/models/resnet")
    page.locator("#versions tr[data-version]").first.wait_for()
    assert page.locator("#versions tr[data-version]").count() == 3
    assert "ResNet-50 fine-tuned" in page.locator("#model").inner_text()
    assert page.locator('#aliases tr[data-alias="production"]').count() == 1
    history = dashboard.get("/models/resnet/aliases/production/history")["items"]
    assert page.locator("#alias-history tbody tr").count() >= len(history)
    screenshot(page, "model")


def test_version_page_shows_files_digests_metadata_and_signature(
    page: Any, dashboard: Dashboard
) -> None:
    page.goto(f"{dashboard.ui}/models/resnet/versions/1")
    for path, data in dashboard.files["resnet", 1].items():
        row = page.locator(f'#files tr[data-path="{path}"]')
        assert row.locator("code.digest").inner_text() == sha(data)
        assert str(len(data)) in row.inner_text()
    assert page.locator("#version [data-status]").inner_text() == "ready"
    assert '"dataset": "catalogue-2026-10"' in page.locator("#metadata pre").inner_text()
    signature = page.locator("#signature tbody tr").all_inner_texts()
    assert [line.split("\t") for line in signature] == [
        ["input", "x", "FP32", "[-1, 4]"],
        ["output", "y", "FP32", "[-1, 4]"],
    ]
    assert SIGNATURE["inputs"][0]["name"] == "x"
    assert "s3://training/runs/1841" in page.locator("#version").inner_text()
    screenshot(page, "version")
    page.goto(f"{dashboard.ui}/models/resnet/versions/@staging")
    staged = dashboard.alias("resnet", "staging")
    page.locator("#files tr[data-path]").first.wait_for()
    assert page.locator("#version-title").inner_text() == f"v{staged} (@staging)"


def test_alias_rollback_click_moves_the_alias_back(page: Any, dashboard: Dashboard) -> None:
    history = dashboard.get("/models/resnet/aliases/production/history")["items"]
    before, expected = history[0]["to_version"], history[0]["from_version"]
    assert dashboard.alias("resnet", "production") == before and expected is not None
    page.goto(f"{dashboard.ui}/models/resnet")
    row = page.locator('#aliases tr[data-alias="production"]')
    assert row.locator(".current-version").inner_text() == f"v{before}"
    row.locator("button.rollback").click()
    page.locator("#flash .msg.ok").filter(has_text=f"rolled back to v{expected}").wait_for()
    assert dashboard.alias("resnet", "production") == expected
    page.locator(f'#aliases tr[data-alias="production"][data-version="{expected}"]').wait_for()
    screenshot(page, "alias-rolled-back")


def test_alias_move_click_points_the_alias_at_the_chosen_version(
    page: Any, dashboard: Dashboard
) -> None:
    latest = dashboard.get("/models/resnet/versions", limit=1)["items"][0]["version"]
    assert dashboard.alias("resnet", "staging") != latest
    page.goto(f"{dashboard.ui}/models/resnet")
    row = page.locator('#aliases tr[data-alias="staging"]')
    row.locator("select.target").select_option(str(latest))
    row.locator("button.move").click()
    page.locator("#flash .msg.ok").filter(has_text=f"now points at v{latest}").wait_for()
    assert dashboard.alias("resnet", "staging") == latest


def test_deployment_rollback_click_creates_a_revision(page: Any, dashboard: Dashboard) -> None:
    before = dashboard.get("/deployments/resnet-prod")
    revisions = dashboard.get("/deployments/resnet-prod/revisions")["items"]
    previous = next(r for r in revisions if r["revision"] == before["revision"] - 1)
    page.goto(f"{dashboard.ui}/deployments/resnet-prod")
    page.locator(f'#revisions tr.current[data-revision="{before["revision"]}"]').wait_for()
    page.click("#rollback-deployment")
    page.locator("#flash .msg.ok").filter(has_text=f"revision {before['revision'] + 1}").wait_for()
    after = dashboard.get("/deployments/resnet-prod")
    assert after["revision"] == before["revision"] + 1
    assert after["version"] == previous["version"]
    newest = dashboard.get("/deployments/resnet-prod/revisions")["items"][0]
    assert newest["revision"] == after["revision"] and newest["reason"] == "rollback"
    page.locator(f'#revisions tr.current[data-revision="{after["revision"]}"]').wait_for()
    screenshot(page, "deployment-rolled-back")


def test_deployment_page_follows_replica_and_endpoint_state_live(
    page: Any, dashboard: Dashboard
) -> None:
    model_version = dashboard.alias("resnet", "production")
    dashboard.send(
        "POST",
        "/deployments",
        201,
        json={"name": "resnet-live", "model": "resnet", "version": model_version, "gpus": 0},
    )
    page.goto(f"{dashboard.ui}/deployments/resnet-live")
    replica_row = page.locator("#replicas tr[data-replica]")
    replica_row.wait_for()
    assert replica_row.get_attribute("data-state") == "pending"
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    # The test plays a deployer worker and its serving process, over the API.
    worker = dashboard.send(
        "POST",
        "/workers",
        201,
        json={"name": "ui-test", "host": "h", "address": "127.0.0.1", "cpu_slots": 1},
    )["id"]
    assignments = dashboard.send("POST", f"/workers/{worker}/heartbeat", json={"replicas": []})
    replica = assignments["assignments"][0]["replica_id"]
    report = {"replicas": [{"replica_id": replica, "state": "loading"}]}
    dashboard.send("POST", f"/workers/{worker}/heartbeat", json=report)
    endpoint = dashboard.send(
        "POST",
        "/endpoints",
        201,
        json={"url": "http://127.0.0.1:9/v2", "replica_id": replica, "status": "loading"},
    )["id"]
    page.locator(f'#replicas tr[data-replica="{replica}"][data-state="loading"]').wait_for(
        timeout=LIVE_TIMEOUT_MS
    )
    page.locator(f'#endpoints tr[data-endpoint="{endpoint}"][data-status="loading"]').wait_for(
        timeout=LIVE_TIMEOUT_MS
    )

    dashboard.send("POST", f"/endpoints/{endpoint}/heartbeat", json={"status": "ready"})
    report = {"replicas": [{"replica_id": replica, "state": "ready"}]}
    dashboard.send("POST", f"/workers/{worker}/heartbeat", json=report)
    page.locator(f'#endpoints tr[data-endpoint="{endpoint}"][data-status="ready"]').wait_for(
        timeout=LIVE_TIMEOUT_MS
    )
    status = dashboard.get("/deployments/resnet-live")["status"]
    page.locator(f'#deployment-status [data-status="{status}"]').wait_for(timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument") is True
    screenshot(page, "deployment-live")
    page.goto(f"{dashboard.ui}/")
    row = page.locator('#deployments tr[data-deployment="resnet-live"]')
    assert row.locator("td.status").inner_text() == status
    page.locator("#models tr[data-model]").first.wait_for()
    screenshot(page, "overview-live")  # docs/dashboard.png is one of these


def test_events_page_lists_newest_first_and_filters(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.ui}/events?model=bert-small")
    rows = page.locator("#events tr[data-event]")
    rows.first.wait_for()
    expected = dashboard.get("/events", model="bert-small", order="desc")["items"]
    ids = rows.evaluate_all("rows => rows.map(r => Number(r.dataset.event))")
    assert ids == [e["id"] for e in expected]
    screenshot(page, "events")
    page.fill("#event-model", "resnet")
    page.fill("#event-action", "alias.moved")
    page.click("#event-filter button")
    moves = dashboard.get("/events", model="resnet", action="alias.moved", order="desc")["items"]
    page.locator(f'#events tr[data-event="{moves[0]["id"]}"]').wait_for()
    shown = page.locator("#events tr[data-event]")
    assert shown.evaluate_all("rows => rows.map(r => Number(r.dataset.event))") == [
        e["id"] for e in moves
    ]
    assert "model=resnet" in page.url and "action=alias.moved" in page.url


def test_without_a_key_the_page_asks_for_one_and_the_saved_key_opens_it(
    browser: Any, dashboard: Dashboard
) -> None:
    with open_page(browser, dashboard, None, "no key") as page:
        page.goto(f"{dashboard.ui}/models/resnet")
        assert "API key" in page.locator("#versions .notice.error").inner_text()
        assert page.locator("#key-state").inner_text() == "no key"
        sent: list[str | None] = []
        page.on(
            "request",
            lambda r: sent.append(r.headers.get("authorization")) if "/api/v1/" in r.url else None,
        )
        page.fill("#api-key", dashboard.tokens["admin"])
        page.click("#key-form button[type=submit]")  # saves it and reloads
        page.locator("#versions tr[data-version]").first.wait_for()
        assert page.locator("#key-state").inner_text() == "key saved"
        assert sent and set(sent) == {f"Bearer {dashboard.tokens['admin']}"}
        page.click("#key-clear")
        assert "API key" in page.locator("#versions .notice.error").inner_text()
        assert page.evaluate("localStorage.getItem('modelplane.apiKey')") is None


def test_a_read_only_key_sees_the_model_but_cannot_roll_back_its_alias(
    browser: Any, dashboard: Dashboard
) -> None:
    before = dashboard.alias("resnet", "production")
    with open_page(browser, dashboard, "viewer", "viewer") as page:
        page.goto(f"{dashboard.ui}/models/resnet")
        page.locator('#aliases tr[data-alias="production"] button.rollback').click()
        refused = page.locator("#flash .msg.error")
        assert "lacks the scope" in refused.inner_text()
    assert dashboard.alias("resnet", "production") == before


def test_a_panel_the_key_may_not_read_does_not_hide_the_others(
    browser: Any, dashboard: Dashboard
) -> None:
    """The audit log needs the admin scope; a read-only key still sees the deployments."""
    with open_page(browser, dashboard, "viewer", "viewer") as page:
        page.goto(f"{dashboard.ui}/")
        page.locator('#deployments tr[data-deployment="resnet-prod"]').wait_for()
        assert "lacks the scope" in page.locator("#events .notice.error").inner_text()
        page.locator("#models tr[data-model]").first.wait_for()


def test_set_alias_form_creates_a_new_alias(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.ui}/models/bert-small")
    page.locator("#alias-new").wait_for()
    page.fill("#alias-new-name", "canary")
    page.select_option("#alias-new-version", "1")
    page.click("#alias-new button")
    page.locator('#aliases tr[data-alias="canary"][data-version="1"]').wait_for()
    assert dashboard.alias("bert-small", "canary") == 1


def test_rollback_to_a_chosen_revision(page: Any, dashboard: Dashboard) -> None:
    dashboard.send(
        "POST",
        "/deployments",
        201,
        json={"name": "resnet-pick", "model": "resnet", "version": 1, "gpus": 1},
    )
    dashboard.send("PATCH", "/deployments/resnet-pick", json={"version": 2})
    dashboard.send("PATCH", "/deployments/resnet-pick", json={"version": 3})
    page.goto(f"{dashboard.ui}/deployments/resnet-pick")
    page.locator('#revisions tr[data-revision="1"] button.rollback-to').click()
    page.locator('#revisions tr.current[data-revision="4"]').wait_for()
    after = dashboard.get("/deployments/resnet-pick")
    assert (after["revision"], after["version"]) == (4, 1)


def test_an_unknown_model_says_so(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.ui}/models/ghost")
    assert "ghost" in page.locator("#versions .notice.error").inner_text()
    assert page.locator("#live.stale").count() == 1
