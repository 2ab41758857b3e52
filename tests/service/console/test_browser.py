"""The console in a real browser (Debian's Chromium, headless, through Selenium): the demo clinic
synced to the FHIR test server, signed in with API keys; numbers on the pages checked against the
store and the library's scoring; replay clicked; axe-core finds no serious or critical violation.
A screenshot of each page goes to ``test-artifacts/console/``."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.console.pages import TEXT_WITHHELD, TREND_DAYS
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.gate import HoldReason
from fhir_alliance_service.sync.outcomes import SERVER_TEXT_NOT_KEPT
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from fhir_alliance.instruments import score
from fhir_alliance.mapping.registry import mapper_for_kind
from tests.service.console.conftest import AXE_SCRIPT, NOTE_TEXT_MARKER, SERVER_MESSAGE, Clinic

pytestmark = pytest.mark.slow
CLIENT_1 = "Patient/demo-client-1"


def navigates(browser: webdriver.Chrome, action: Any) -> None:
    """Run ``action`` (a click, a submit) and wait until the browser has left the current page."""
    page = browser.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(browser, 15).until(lambda _: _is_gone(page))


def _is_gone(element: WebElement) -> bool:
    """Selenium's ``staleness_of``, also when Chromium answers a node of the page just left with
    "does not belong to the document" (seen once in CI) instead of a stale element reference."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in (error.msg or ""):
            return True
        raise
    return False


def sign_in(browser: webdriver.Chrome, clinic: Clinic, scope: str) -> None:
    browser.delete_all_cookies()
    browser.get(clinic.url("/console/sign-in"))
    browser.find_element(By.ID, "api_key").send_keys(clinic.keys[scope])
    navigates(browser, browser.find_element(By.CSS_SELECTOR, "form.sign-in button").click)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sync overview"


def table_rows(browser: webdriver.Chrome, table_id: str) -> list[list[str]]:
    table = browser.find_element(By.ID, table_id)
    return [
        [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
        for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]


def screenshot(browser: webdriver.Chrome, artifacts: Path, name: str) -> None:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(int(height), 800), 6000))
    assert browser.save_screenshot(str(artifacts / f"{name}.png"))
    browser.set_window_size(1280, 1600)


def serious_violations(browser: webdriver.Chrome) -> list[dict[str, Any]]:
    """axe-core run in the page (injected through the driver, as the page's CSP allows no script)."""
    browser.execute_script(AXE_SCRIPT.read_text(encoding="utf-8"))
    violations: list[dict[str, Any]] = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: 'critical',"
        " help: String(e), nodes: []}]));"
    )
    return [v for v in violations if v.get("impact") in ("serious", "critical")]


def _describe(violations: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{v['id']}: {v.get('help')} at {[n.get('target') for n in v.get('nodes', [])][:3]}"
        for v in violations
    )


def test_overview_shows_the_stores_counts_held_reasons_and_the_dead_letter(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """The overview's counts equal the store's, held records are grouped by the gate's words, the
    dead letter shows the server's message, the last contact is shown, axe finds nothing serious."""
    sign_in(browser, clinic, "admin")
    counts = clinic.store.counts_by_state()
    shown = {row[0]: int(row[2]) for row in table_rows(browser, "counts")}
    assert shown == {
        state.value: counts[state]
        for state in (
            SyncState.QUEUED,
            SyncState.HELD,
            SyncState.SENT,
            SyncState.FAILED,
            SyncState.DEAD_LETTERED,
        )
    }
    assert shown["sent"] > 0 and shown["held"] > 0 and shown["dead-lettered"] == 1
    held = clinic.store.list_by_state(SyncState.HELD, limit=1000)
    expected_reasons: dict[str, int] = {}
    for status in held:
        expected_reasons[str(status.held_reason)] = (
            expected_reasons.get(str(status.held_reason), 0) + 1
        )
    assert {row[0]: int(row[1]) for row in table_rows(browser, "held")} == expected_reasons
    assert expected_reasons and set(expected_reasons) <= {reason.words for reason in HoldReason}
    dead = table_rows(browser, "dead-lettered")
    assert len(dead) == 1 and dead[0][0] == clinic.refused_record_id
    # The server's own words are not kept (they may quote patient data); the place is.
    assert SERVER_MESSAGE not in dead[0][1] and SERVER_TEXT_NOT_KEPT in dead[0][1]
    assert browser.find_element(By.ID, "last-contact").text != "never"
    trend = table_rows(browser, "trend")
    assert len(trend) == TREND_DAYS
    today = trend[-1][0]
    entries = clinic.store.list_audit(limit=100_000)
    actions = ("intake", "disclose", "hold", "dead-letter")  # the columns after the day
    assert [int(n) for n in trend[-1][1:]] == [
        len({e.record_id for e in entries if e.action == a and e.at.date().isoformat() == today})
        for a in actions
    ]
    assert int(trend[-1][2]) >= counts[SyncState.SENT] > 0  # every sent record was sent today
    chart = browser.find_element(By.CSS_SELECTOR, "figure img")
    assert chart.get_attribute("alt") and browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", chart
    )
    screenshot(browser, artifacts, "overview")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)


def test_patient_view_shows_the_librarys_scores_events_consents_and_decision(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """Client 1's SRS and ORS totals equal the library's scoring of the stored records; the
    rupture and repair, the automated rating, the consent timeline and the engine's decision are
    shown; axe finds nothing serious."""
    sign_in(browser, clinic, "read")
    navigates(browser, browser.find_element(By.LINK_TEXT, CLIENT_1).click)
    assert browser.current_url.endswith(f"/console/patients/{clinic.store.patient_token(CLIENT_1)}")
    assert "demo-client" not in browser.current_url
    expected: dict[str, list[Decimal]] = {"srs": [], "ors": [], "wai-sr": []}
    stored = sorted(
        (
            r
            for r in clinic.store.list_records(patient=CLIENT_1, limit=1000)
            if r.kind == "instrument-administration"
        ),
        key=lambda r: r.body["effective"],
    )
    for row in stored:
        record = mapper_for_kind(row.kind).load(row.body)
        total = score(record)[0].value
        assert total is not None
        expected[record.instrument.value].append(total)
    for code in ("srs", "ors", "wai-sr"):
        totals = [Decimal(row[1].split()[0]) for row in table_rows(browser, f"{code}-table")]
        assert totals == expected[code], code
    srs_rows = table_rows(browser, "srs-table")
    below = [row for row in srs_rows if "below the cutoff" in row[2]]
    assert len(below) == sum(1 for t in expected["srs"] if t < 36)
    ors_changes = [row[3] for row in table_rows(browser, "ors-table")]
    assert ors_changes[0] == "first session"
    events = table_rows(browser, "events")
    assert [row[1] for row in events] == ["rupture", "repair"]
    ratings = table_rows(browser, "ratings")
    assert any(row[3].startswith("automated: demo-alliance-analyser") for row in ratings)
    consents = browser.find_element(By.ID, "consents").text
    assert "given: sharing of alliance measures" in consents and "restricted" in consents
    decision = browser.find_element(By.ID, "decision-1").text
    assert "Organization/demo-ehr" in decision and "PERMIT" in decision.upper()
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 4  # SRS, ORS, WAI-SR, ratings
    for image in images:
        assert image.get_attribute("alt")
        assert browser.execute_script("return arguments[0].naturalWidth > 0", image)
    screenshot(browser, artifacts, "patient")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)


def test_patient_view_lists_session_notes_as_the_store_and_the_gate_left_them(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """Client 1's notes, synced by the real worker, are listed with their status, the AI label in
    words and the store's sync state (the gate's hold reasons, the signed progress note sent);
    no note text is on the page or on a note's record page; axe finds nothing serious."""
    sign_in(browser, clinic, "read")
    browser.get(clinic.url(f"/console/patients/{clinic.store.patient_token(CLIENT_1)}"))
    links = browser.find_elements(By.CSS_SELECTOR, "#notes tbody tr a")
    record_ids = [str(link.get_attribute("href")).rsplit("/", 1)[-1] for link in links]
    stored = {
        r.record_id: r
        for r in clinic.store.list_records(patient=CLIENT_1, limit=1000)
        if r.kind == "session-note"
    }
    assert sorted(record_ids) == sorted(stored) and len(stored) == 4
    shown = dict(zip(record_ids, table_rows(browser, "notes"), strict=True))
    states: dict[str, SyncState] = {}
    held: dict[str, str] = {}
    for record_id, cells in shown.items():
        body = stored[record_id].body
        status = clinic.store.sync_status(record_id)
        assert status is not None
        states[body["id"].rsplit("|", 1)[-1]] = status.state
        if status.held_reason:
            held[body["id"].rsplit("|", 1)[-1]] = status.held_reason
        assert cells[2] == body.get("status", "draft")
        assert ("AI-drafted by session-scribe 2.3" in cells[4]) == ("ai_drafting" in body)
        expected_sync = (
            f"held: {status.held_reason}"
            if status.state is SyncState.HELD
            else f"{status.state.value} ("
        )
        assert cells[5].startswith(expected_sync), (cells, status)
    assert states == {
        "client-1-progress": SyncState.SENT,
        "client-1-ai": SyncState.HELD,
        "client-1-process": SyncState.HELD,
        "client-1-draft": SyncState.HELD,
    }
    # The demo sharing consent denies AIAST and client 1's restriction denies PSYTHPN.
    assert held == {
        "client-1-ai": HoldReason.DENIED.words,
        "client-1-process": HoldReason.DENIED.words,
        "client-1-draft": HoldReason.DRAFT_NOTE.words,
    }
    assert NOTE_TEXT_MARKER not in browser.page_source
    screenshot(browser, artifacts, "patient-notes")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)
    # The sent progress note's page: its audit entries (disclosure, Provenance) are shown too.
    sent_note = next(i for i in record_ids if shown[i][5].startswith("sent"))
    navigates(browser, links[record_ids.index(sent_note)].click)
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Record {sent_note}"
    actions = [row[1] for row in table_rows(browser, "history")]
    assert "disclose" in actions
    encoded = base64.b64encode(f"Session 2: {NOTE_TEXT_MARKER}.".encode()).decode()
    assert NOTE_TEXT_MARKER not in browser.page_source and encoded not in browser.page_source
    assert (
        '"resourceType": "DocumentReference"'
        in browser.find_element(By.CSS_SELECTOR, "pre.json").text
    )
    screenshot(browser, artifacts, "note-record")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)


def test_pages_print_without_navigation_or_buttons(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """In print media the header's navigation, sign-out and forms are hidden, charts and tables
    stay; Chromium prints the patient page to PDF (saved beside the screenshots)."""
    sign_in(browser, clinic, "admin")
    browser.get(clinic.url(f"/console/patients/{clinic.store.patient_token(CLIENT_1)}"))
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert not browser.find_element(By.CSS_SELECTOR, "form.sign-out").is_displayed()
        assert not browser.find_element(By.CSS_SELECTOR, "header.site nav").is_displayed()
        assert all(i.is_displayed() for i in browser.find_elements(By.CSS_SELECTOR, "figure img"))
        assert browser.find_element(By.ID, "srs-table").is_displayed()
        pdf = base64.b64decode(browser.print_page())
        assert pdf.startswith(b"%PDF")
        (artifacts / "patient.pdf").write_bytes(pdf)
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})


def test_an_unknown_console_address_is_a_styled_page_in_the_browser(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """A mistyped console address shows the console's 404 page, styled by its stylesheet (the
    CSP lets it load), with a way back; axe-core finds no serious or critical violation."""
    sign_in(browser, clinic, "read")
    browser.get(clinic.url("/console/no-such-page"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("404: ")
    assert browser.find_element(By.CSS_SELECTOR, "header.site .brand").is_displayed()
    skip_link = browser.find_element(By.CSS_SELECTOR, "a.skip")
    assert skip_link.value_of_css_property("position") == "absolute"  # the stylesheet applies
    back = browser.find_element(By.LINK_TEXT, "Back to the sync overview")
    screenshot(browser, artifacts, "not-found")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)
    navigates(browser, back.click)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sync overview"


def test_patient_view_of_a_declined_intervention_and_a_revocation(
    browser: webdriver.Chrome, clinic: Clinic
) -> None:
    """Client 2's timeline shows the declined intervention and the engine's deny."""
    sign_in(browser, clinic, "read")
    browser.get(
        clinic.url(f"/console/patients/{clinic.store.patient_token('Patient/demo-client-2')}")
    )
    assert "declined intervention" in browser.find_element(By.ID, "consents").text
    assert "DENY" in browser.find_element(By.ID, "decision-1").text.upper()


def test_record_view_shows_history_fhir_resources_and_audit(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """A sent record's page lists its audit history and the mapped Observation as JSON."""
    sign_in(browser, clinic, "read")
    sent = clinic.store.list_by_state(SyncState.SENT, limit=1)[0]
    browser.get(clinic.url(f"/console/records/{sent.record_id}"))
    assert browser.find_element(By.ID, "sync-state").text.startswith("sent")
    actions = [row[1] for row in table_rows(browser, "history")]
    assert "intake" in actions and "disclose" in actions
    resources = browser.find_elements(By.CSS_SELECTOR, "pre.json")
    assert any(
        '"resourceType": "Observation"' in r.text or '"resourceType": "Consent"' in r.text
        for r in resources
    )
    screenshot(browser, artifacts, "record")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)


def test_a_ruptures_session_narrative_is_on_no_page(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """The demo rupture's narrative (psychotherapy-note content, labelled PSYTHPN) is on neither
    the patient page nor the rupture's record page, for an admin session either: the
    Observation's ``note`` reads the marker and the page says why; axe finds nothing serious."""
    sign_in(browser, clinic, "admin")
    (rupture,) = [
        r
        for r in clinic.store.list_records(patient=CLIENT_1, limit=1000)
        if r.kind == "rupture" and r.body.get("narrative")
    ]
    narrative = rupture.body["narrative"]
    browser.get(clinic.url(f"/console/patients/{clinic.store.patient_token(CLIENT_1)}"))
    assert "rupture" in browser.find_element(By.TAG_NAME, "main").text
    assert narrative not in browser.page_source
    browser.get(clinic.url(f"/console/records/{rupture.record_id}"))
    assert narrative not in browser.page_source
    assert "PSYTHPN" in browser.find_element(By.ID, "note-text-withheld").text
    (observation,) = [
        r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "pre.json")
        if '"resourceType": "Observation"' in r.text
    ]
    assert TEXT_WITHHELD in observation and "PSYTHPN" in observation
    screenshot(browser, artifacts, "rupture-record")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)


def test_read_key_and_signed_out_browser_cannot_replay(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """A read session sees no replay button and a forged replay form is refused (403); a
    signed-out browser posting the form lands on the sign-in page; the dead letter stays."""
    record_url = clinic.url(f"/console/records/{clinic.refused_record_id}")
    sign_in(browser, clinic, "read")
    browser.get(record_url)
    assert not browser.find_elements(By.XPATH, "//button[text()='Replay']")
    shown = browser.find_element(By.ID, "server-message").text
    assert SERVER_MESSAGE not in shown and SERVER_TEXT_NOT_KEPT in shown
    token = browser.find_element(By.NAME, "csrf_token").get_attribute("value")
    _post_form(browser, f"{record_url}/replay", token)
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("403")
    screenshot(browser, artifacts, "replay-refused")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)

    browser.delete_all_cookies()
    browser.get(clinic.url("/console/sign-in"))
    _post_form(browser, f"{record_url}/replay", token)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sign in"
    screenshot(browser, artifacts, "sign-in")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)
    status = clinic.store.sync_status(clinic.refused_record_id)
    assert status is not None and status.state is SyncState.DEAD_LETTERED


def test_an_admin_replays_a_dead_letter_by_clicking(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """An admin clicks Replay on the overview: the record is queued again in the store. (The
    worker then dead-letters it again, so that other tests find the clinic as it was.)"""
    sign_in(browser, clinic, "admin")
    navigates(browser, browser.find_element(By.CSS_SELECTOR, "#dead-lettered button").click)
    assert "Queued again" in browser.find_element(By.CSS_SELECTOR, "p.notice").text
    status = clinic.store.sync_status(clinic.refused_record_id)
    assert status is not None and status.state is SyncState.QUEUED
    screenshot(browser, artifacts, "replayed")
    clinic.sync_to_refusing_server()
    status = clinic.store.sync_status(clinic.refused_record_id)
    assert status is not None and status.state is SyncState.DEAD_LETTERED


def _post_form(browser: webdriver.Chrome, action: str, token: str | None) -> None:
    """Submit a POST form built in the page (as a forged cross-page form would be)."""
    navigates(
        browser,
        lambda: browser.execute_script(
            "const form = document.createElement('form'); form.method = 'post';"
            "form.action = arguments[0];"
            "const input = document.createElement('input'); input.type = 'hidden';"
            "input.name = 'csrf_token'; input.value = arguments[1] || ''; form.appendChild(input);"
            "document.body.appendChild(form); form.submit();",
            action,
            token,
        ),
    )


def test_an_admin_decides_a_flagged_conflict_by_clicking(
    browser: webdriver.Chrome, clinic: Clinic, artifacts: Path
) -> None:
    """A record held for a person by the conflict policy: the overview counts and lists it,
    linking to its page (axe finds nothing serious there); its page shows the EHR's version and,
    to an admin, the two decisions; axe finds nothing serious; Keep the EHR's version records it
    sent, and the overview no longer lists it. (A record of its own patient, so that the other tests find the clinic as it was.)"""
    from datetime import UTC, datetime

    from fhir_alliance_service.store.interface import SentResource
    from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
    from fhir_alliance_service.usecases.intake import intake_records

    from tests.service.usecases.payloads import for_patient, observation

    now = datetime.now(UTC)
    payload = for_patient(observation("rupture"), "Patient/demo-conflict", suffix="-conflict")
    [taken] = intake_records(clinic.store, [payload], at=now)
    items = clinic.store.claim("test-worker", limit=100, lease_seconds=60, now=now)
    [item] = [i for i in items if i.record_id == taken.record_id]
    others = [i.item_id for i in items if i.record_id != taken.record_id]
    clinic.store.release(others, "test-worker", at=now)
    theirs = SentResource("Observation", "theirs-1", "4")
    assert clinic.store.mark_held(
        item.item_id,
        "test-worker",
        reason=CONFLICT_HELD_REASON,
        audit=[],
        at=now,
        conflict="flagged",
        conflict_versions=[theirs],
    )

    sign_in(browser, clinic, "admin")
    flagged = clinic.store.flagged_conflicts(limit=100)
    listed = table_rows(browser, "conflicts")
    assert [row[0] for row in listed] == [s.record_id for s in flagged.items]
    assert taken.record_id in [row[0] for row in listed]
    count = browser.find_element(By.ID, "conflicts-count").text
    assert count.startswith(f"{flagged.count} record"), count
    screenshot(browser, artifacts, "overview-conflicts")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)
    link = browser.find_element(By.LINK_TEXT, taken.record_id)
    navigates(browser, link.click)
    assert browser.current_url == clinic.url(f"/console/records/{taken.record_id}")
    assert "Observation/theirs-1 (version 4)" in browser.find_element(By.ID, "conflict").text
    screenshot(browser, artifacts, "conflict")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)
    keep = browser.find_element(By.XPATH, "//button[@value='keep-remote']")
    navigates(browser, keep.click)
    assert "version is kept" in browser.find_element(By.CSS_SELECTOR, "p.notice").text
    status = clinic.store.sync_status(taken.record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.sent == (theirs,)
    screenshot(browser, artifacts, "conflict-decided")
    violations = serious_violations(browser)
    assert not violations, _describe(violations)
    browser.get(clinic.url("/console/"))
    left = clinic.store.flagged_conflicts(limit=100).count
    count = browser.find_element(By.ID, "conflicts-count").text
    assert count == "None." if left == 0 else count.startswith(f"{left} record"), count
    assert not browser.find_elements(By.LINK_TEXT, taken.record_id)
