"""The review page with a workbench (serve --db) in a real browser: Debian's Chromium driven by
Playwright against a served trigger model and a SQLite workbench database.

Checked: the page finds the workbench and lists the worklist (queued, then pre-coded notes, with
their metadata), filters it; opening a note restores the decision saved through the API; Save
stores the page's decision on the server (read back through the API); Next note claims the first
pre-coded note; the history panel shows who did what; two coders (two browser contexts, two
tokens) on one note: the second's save is refused (412) with the conflict message and a Reload
that shows the first's decision, nothing overwritten; axe on the worklist and review views; no
request to another host. Skipped as tests/test_serve_browser.py is (no Chromium or Playwright),
except under CI=true."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import test_serve_browser as sb
from test_work_api import wait_for
from trigger_fixture import trigger_note


def work_notes(ids: list[str], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": note_id, "text": trigger_note(rng)[1], "meta": {"encounter_date": f"2026-11-{10 + i:02d}",
                                                                   "ward": "4B"}}
            for i, note_id in enumerate(ids)]




@pytest.fixture(scope="module")
def workbench(trigger_model, tmp_path_factory):
    """A served trigger model with a SQLite workbench: (url, {name: token}, {name: httpx client})."""
    if sb.MISSING:
        pytest.fail(f"under CI=true the browser test must run: {sb.MISSING}")
    from service_harness import ThreadedService

    from clem_icd.serve.settings import ServeSettings
    from clem_icd.workbench.db import Database, upgrade
    from clem_icd.workbench.users import add_user

    path = tmp_path_factory.mktemp("work-page") / "work.db"
    db = Database(str(path))
    upgrade(db)
    tokens = {name: add_user(db, name, "coder") for name in ("ann", "bob")}
    db.dispose()
    with ThreadedService(ServeSettings(model=trigger_model, max_wait_ms=5, db=str(path))) as url:
        clients = {name: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                   for name, token in tokens.items()}
        yield url, tokens, clients
        for client in clients.values():
            client.close()


@pytest.fixture(scope="module")
def browser(workbench):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(sb.CHROMIUM), args=sb.CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def visit(browser, workbench):
    url, tokens, _ = workbench
    visits = []

    def open_page(name: str) -> sb.Visit:
        from playwright.sync_api import expect

        v = sb.Visit(browser, url)
        visits.append(v)
        sb.connect(v.page, tokens[name])
        expect(v.page.locator("#worklist")).to_be_visible()
        return v

    yield open_page
    for v in visits:
        v.close()


def open_note(page, note_id: str) -> None:
    from playwright.sync_api import expect

    with page.expect_response(lambda r: urlsplit(r.url).path == f"/v1/work/notes/{note_id}"):
        page.click(f".worklist-open[data-id='{note_id}']")
    expect(page.locator("#work-note-heading")).to_have_text(f"Note {note_id}")


def decisions(page) -> dict[str, str]:
    return dict(page.eval_on_selector_all(".code-row", "rows => rows.map(r => [r.dataset.code, r.dataset.decision])"))


def test_worklist_restore_save_next_note_and_history(visit, workbench):
    from playwright.sync_api import expect

    _, _, users = workbench
    ann = users["ann"]
    ids = ["visit-1", "visit-2", "visit-3"]
    assert ann.post("/v1/work/notes", json={"notes": work_notes(ids, seed=5)}).status_code == 200

    v = visit("ann")
    page = v.page
    expect(page.locator("#note-panel")).to_be_hidden()  # notes come from the worklist here
    rows = page.locator("#worklist-rows tr")
    expect(rows).to_have_count(3)
    assert set(page.eval_on_selector_all("#worklist-rows tr", "rs => rs.map(r => r.dataset.status)")) <= {
        "queued", "pre-coded"}
    wait_for(lambda: not ann.get("/v1/work/notes", params={"status": "queued"}).json()["notes"])
    page.click("#worklist-refresh")
    expect(page.locator("#worklist-rows tr[data-status='pre-coded']")).to_have_count(3)
    first_row = page.locator("#worklist-rows tr[data-id='visit-1'] td")
    expect(first_row.nth(2)).to_have_text("2026-11-10")  # the encounter date column
    expect(first_row.nth(3)).to_have_text("ward: 4B")
    sb.axe_check(page)  # the worklist view
    sb.ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(sb.ARTIFACTS / "workbench-worklist.png"), full_page=True)

    # A decision saved through the API is the one the page restores.
    note = ann.get("/v1/work/notes/visit-2")
    codes = [s["code"] for s in note.json()["suggestions"]]
    assert codes, "the trigger coder suggests the planted codes"
    saved = {"accepted": codes[:1], "rejected": codes[1:]}
    answer = ann.put("/v1/work/notes/visit-2/decision", json=saved, headers={"If-Match": note.headers["ETag"]})
    assert answer.status_code == 200
    open_note(page, "visit-2")
    expect(page.locator(".code-row")).to_have_count(len(codes))
    assert decisions(page) == {codes[0]: "accepted", **{c: "rejected" for c in codes[1:]}}
    assert page.eval_on_selector("#note-view", "e => e.textContent") == note.json()["text"]
    expect(page.locator("#work-note-info")).to_contain_text("last saved by ann")
    expect(page.locator("#history-list li")).to_have_count(3)  # enqueued, pre-coded, decision saved
    expect(page.locator("#history-list")).to_contain_text("ann · decision saved")

    # Select a code: its evidence is highlighted, exactly the note's passages.
    page.click(f".code-select[data-code='{codes[0]}']")
    text = note.json()["text"]
    for mark in page.eval_on_selector_all("#note-view mark", "ms => ms.map(m => [+m.dataset.start, +m.dataset.end, m.textContent])"):
        assert text[mark[0]:mark[1]] == mark[2]
    sb.axe_check(page)  # the review view of a workbench note
    page.screenshot(path=str(sb.ARTIFACTS / "workbench-review.png"), full_page=True)

    # Change the decision by keyboard and save with Ctrl+S: the server holds the page's decision.
    page.focus(f".accept[data-code='{codes[0]}']")
    page.keyboard.press("Space")  # accepted -> undecided
    page.focus(f".reject[data-code='{codes[0]}']")
    page.keyboard.press("Enter")
    expect(page.locator("#work-note-info")).to_contain_text("unsaved changes")
    with page.expect_response(lambda r: r.request.method == "PUT") as put:
        page.keyboard.press("Control+s")
    # The ETag the page read when it opened the note, not one fetched just before writing.
    assert put.value.status == 200 and put.value.request.headers["if-match"] == answer.headers["ETag"]
    expect(page.locator("#status")).to_contain_text("visit-2 saved")
    stored = ann.get("/v1/work/notes/visit-2").json()["decision"]
    assert stored["by"] == "ann" and stored["accepted"] == [] and stored["rejected"] == sorted(codes)
    expect(page.locator("#work-note-info")).not_to_contain_text("unsaved")

    # Next note: the first pre-coded note (visit-1), opened and claimed.
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/work/notes/visit-1/claim"):
        page.click("#next-note")
    expect(page.locator("#work-note-heading")).to_have_text("Note visit-1")
    claimed = ann.get("/v1/work/notes/visit-1").json()
    assert claimed["status"] == "in review" and claimed["assignee"] == "ann"
    expect(page.locator("#history-list")).to_contain_text("ann · claimed")

    # Filters: in review and mine.
    page.select_option("#worklist-status", "in review")
    expect(page.locator("#worklist-rows tr")).to_have_count(2)
    page.check("#worklist-mine")
    expect(page.locator("#worklist-rows tr")).to_have_count(2)
    page.select_option("#worklist-status", "pre-coded")
    expect(page.locator("#worklist-rows tr")).to_have_count(0)
    expect(page.locator("#worklist-empty")).to_be_visible()

    # Submit for audit: coded, by ann.
    page.uncheck("#worklist-mine")
    page.select_option("#worklist-status", "")
    open_note(page, "visit-2")
    page.click("#work-submit")
    expect(page.locator("#status")).to_contain_text("visit-2 submitted for audit")
    assert ann.get("/v1/work/notes/visit-2").json()["status"] == "coded"


def test_two_coders_on_one_note_the_second_gets_the_conflict(visit, workbench):
    from playwright.sync_api import expect

    _, _, users = workbench
    ann, bob = users["ann"], users["bob"]
    assert ann.post("/v1/work/notes", json={"notes": work_notes(["shared-1"], seed=9)}).status_code == 200
    wait_for(lambda: ann.get("/v1/work/notes/shared-1").json()["status"] == "pre-coded")
    codes = [s["code"] for s in ann.get("/v1/work/notes/shared-1").json()["suggestions"]]
    assert codes

    first, second = visit("ann"), visit("bob")
    for v in (first, second):
        v.page.click("#worklist-refresh")
        open_note(v.page, "shared-1")

    first.page.click(f".accept[data-code='{codes[0]}']")
    first.page.click("#work-save")
    expect(first.page.locator("#status")).to_contain_text("shared-1 saved")

    second.page.click(f".reject[data-code='{codes[0]}']")
    with second.page.expect_response(lambda r: r.request.method == "PUT") as put:
        second.page.click("#work-save")
    assert put.value.status == 412
    conflict = second.page.locator("#work-conflict-text")
    expect(conflict).to_contain_text("another coder")
    expect(conflict).to_contain_text("Nothing was overwritten")
    reload = second.page.get_by_role("button", name="Reload the note")
    expect(reload).to_be_visible()
    expect(reload).to_be_focused()  # keyboard-first: Enter reloads
    sb.axe_check(second.page)  # with the conflict shown
    stored = ann.get("/v1/work/notes/shared-1").json()["decision"]
    assert stored["by"] == "ann" and stored["accepted"] == [codes[0]]  # the first's decision stands

    second.page.keyboard.press("Enter")
    expect(second.page.locator("#work-note-info")).to_contain_text("last saved by ann")
    expect(second.page.locator(f".code-row[data-code='{codes[0]}']")).to_have_attribute("data-decision", "accepted")
    expect(second.page.locator("#work-conflict")).to_be_hidden()

    # The note is ann's now: bob's next save is refused with the server's reason (409).
    second.page.click(f".reject[data-code='{codes[0]}']")
    second.page.click("#work-save")
    expect(second.page.locator("#error")).to_contain_text("(409): note shared-1 is in review by ann")
    assert bob.get("/v1/work/notes/shared-1").json()["decision"]["by"] == "ann"
