"""The coder's review page (GET /) in a real browser: Debian's Chromium driven by Playwright
against `clem-icd serve` in a subprocess, with the trigger model (its codes come with evidence).

Checked: the text reaches the server exactly as pasted or loaded (CRLF, an emoji before the
evidence, so code point and UTF-16 offsets differ) and is shown exactly so; each highlighted <mark>
is note[start:end] of the selected code's evidence; review by keyboard alone (accept, reject, a
highlight selects its code, add a code by search); the JSON export (made in the page) and the
FHIR export (the page's decisions posted to /v1/review/fhir, the server's Bundle downloaded: the
FHIR mapping is the server's alone); the messages for a wrong token, a busy server, too large, a timeout, a truncated note and a code without evidence;
axe (no serious or critical WCAG 2.1 A/AA violation); no request to any other host.

Skipped, with the reason, when /usr/bin/chromium or playwright is missing - except under CI=true,
where that fails. The browser is never downloaded (`playwright install` is not run)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from trigger_fixture import TRIGGER_CODES, trigger_note

from clem_icd.inference import fhir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "review-page-token-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EMOJI = "\U0001fa7a"  # stethoscope: one code point, two UTF-16 units
FILLER = "Nursing notes: tolerating diet, pain controlled, slept well overnight. "
SERIOUS = {"serious", "critical"}


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
        from axe_playwright_python.sync_playwright import Axe  # noqa: F401
        from fhirclient.models import bundle  # noqa: F401
    except ImportError:
        return "playwright / axe-playwright-python / fhirclient are not installed (pip install -e '.[dev]')"
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return "the serve extra (fastapi, uvicorn) is not installed"
    return None


MISSING = _missing()
if MISSING and os.environ.get("CI") != "true":
    pytest.skip(MISSING, allow_module_level=True)


# ---------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def service(trigger_model, tmp_path_factory):
    """`clem-icd serve` with a token file on a free loopback port; its base URL."""
    if MISSING:
        pytest.fail(f"under CI=true the browser test must run: {MISSING}")
    from service_harness import start_cli_service, wait_ready

    folder = tmp_path_factory.mktemp("serve-page")
    token_file = folder / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    log = folder / "serve.log"
    process, url = start_cli_service(trigger_model, log, "--host", "127.0.0.1", "--token-file", str(token_file),
                                     "--max-wait-ms", "5", "--drain-seconds", "0")
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(service):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Visit:
    """One page in a fresh context; every request to a host other than the service's is aborted
    and counted, and uncaught script errors are collected."""

    def __init__(self, browser, service: str):
        self.host = urlsplit(service).netloc
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.context.route("**/*", self._guard)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(f"{service}/")

    def _guard(self, route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != self.host:
            self.blocked.append(url.netloc)
            route.abort()
        else:
            route.continue_()

    def close(self) -> None:
        self.context.close()
        assert self.blocked == [], f"requests to other hosts: {sorted(set(self.blocked))}"
        assert self.errors == [], f"script errors: {self.errors}"


@pytest.fixture
def visit(browser, service):
    visits = []

    def open_page(token: str | None = TOKEN) -> Visit:
        v = Visit(browser, service)
        visits.append(v)
        if token is not None:
            connect(v.page, token)
        return v

    yield open_page
    for v in visits:
        v.close()


# ---------------------------------------------------------------------------- helpers


def connect(page, token: str) -> None:
    page.fill("#token", token)
    page.press("#token", "Tab")  # the change event (re)loads the model card with the token


def review_note(seed: int) -> str:
    """A trigger note with an emoji before its first planted phrase and CRLF line endings."""
    _, text, spans = trigger_note(np.random.default_rng(seed))
    start = spans[0][0]
    return (text[:start] + EMOJI + " " + text[start:]).replace("\n", "\r\n")


def paste(page, selector: str, text: str) -> None:
    """A real paste event (a ClipboardEvent carrying a DataTransfer), as Ctrl+V would fire."""
    page.focus(selector)
    page.evaluate("""([selector, text]) => {
        const data = new DataTransfer();
        data.setData("text/plain", text);
        document.querySelector(selector).dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
    }""", [selector, text])


def code_note(page) -> tuple[str, dict]:
    """Clicks "Code the note": (the note text as sent, the /v1/code answer)."""
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/code" and r.request.method == "POST") as info:
        page.click("#code-button")
    response = info.value
    body = json.loads(response.request.post_data)
    assert response.status == 200, response.text()
    return body["notes"][0]["text"], response.json()


def merged(evidence: list[dict]) -> list[tuple[int, int]]:
    """A code's evidence spans as the page marks them: overlapping spans merge into one."""
    out: list[list[int]] = []
    for span in sorted(evidence, key=lambda s: (s["start"], s["end"])):
        if span["end"] <= span["start"]:
            continue
        if out and span["start"] < out[-1][1]:
            out[-1][1] = max(out[-1][1], span["end"])
        else:
            out.append([span["start"], span["end"]])
    return [tuple(r) for r in out]


def check_marks(page, text: str, code: dict) -> list[dict]:
    """Every <mark> is text[start:end] (Python offsets) of the code's evidence, and none is missing."""
    marks = page.eval_on_selector_all("#note-view mark", """marks => marks.map(m => ({
        code: m.dataset.code, start: Number(m.dataset.start), end: Number(m.dataset.end), text: m.textContent}))""")
    for span in code["evidence"]:
        assert span["text"] == text[span["start"]:span["end"]]  # the server's side of the contract
    assert [(m["start"], m["end"]) for m in marks] == merged(code["evidence"])
    for m in marks:
        assert m["code"] == code["code"]
        assert m["text"] == text[m["start"]:m["end"]]
    return marks


def active(page) -> dict:
    return page.evaluate("""() => {
        const a = document.activeElement;
        return {id: a.id, tag: a.tagName, cls: a.className, code: a.dataset.code || null,
                codes: a.dataset.codes || null, pressed: a.getAttribute("aria-pressed")};
    }""")


def press_until(page, key: str, wanted, limit: int = 40) -> dict:
    for _ in range(limit):
        page.keyboard.press(key)
        now = active(page)
        if wanted(now):
            return now
    raise AssertionError(f"{key} x{limit} never reached the element (last: {active(page)})")


def axe_check(page) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": [
        "wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}})
    bad = [v for v in results.response["violations"] if v["impact"] in SERIOUS]
    assert not bad, results.generate_report()


def export_fhir(page, press) -> tuple[list[dict], dict]:
    """`press()` exports the FHIR Bundle: (the decisions the page posted, the bundle downloaded),
    which must be the server's answer to them."""
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/review/fhir") as info:
        with page.expect_download() as download:
            press()
    response = info.value
    assert response.request.method == "POST" and response.status == 200, response.text()
    posted = json.loads(response.request.post_data)
    bundle = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert bundle == response.json()
    assert bundle["entry"] == fhir.decision_entries(posted["note_id"], posted["decisions"])
    return posted["decisions"], bundle


def decision_of(page, code: str) -> str:
    return page.get_attribute(f".code-row[data-code='{code}']", "data-decision")


def _fulfil(status: int, headers: dict):
    def answer(route) -> None:
        route.fulfill(status=status, headers=headers, content_type="application/json",
                      body=json.dumps({"detail": f"status {status} for the test"}))

    return answer


# ---------------------------------------------------------------------------- tests


def test_review_by_paste_keyboard_and_export(visit):
    from fhirclient.models import bundle as fhir_bundle  # R4 models (the dev extra): strict parsing
    from playwright.sync_api import expect

    v = visit()
    page = v.page
    expect(page.locator("#model-info")).to_contain_text("8 codes")
    assert page.input_value("#explain") == "attention"
    # The token: a password field, never in the address, in sessionStorage only when asked.
    assert page.get_attribute("#token", "type") == "password" and TOKEN not in page.url
    assert page.evaluate("Object.keys(sessionStorage).length") == 0
    page.check("#remember-token")
    assert TOKEN in page.evaluate("Object.values(sessionStorage)")
    page.uncheck("#remember-token")
    assert page.evaluate("Object.keys(sessionStorage).length") == 0
    page.fill("#threshold", "0")
    page.fill("#top-k", "3")  # three codes, whatever the tiny model's calibration

    note = review_note(seed=1)
    paste(page, "#note-text", note)
    assert page.input_value("#note-text") == note.replace("\r\n", "\n")  # the textarea's own view
    expect(page.locator("#note-stats")).to_contain_text("CRLF")
    text, answer = code_note(page)
    assert text == note  # CRLF and the emoji reach the server as pasted
    result = answer["results"][0]
    codes = {c["code"]: c for c in result["codes"]}
    order = [c["code"] for c in result["codes"]]
    assert len(order) == 3 and all(code["evidence"] for code in result["codes"])
    expect(page.locator(".code-row")).to_have_count(3)
    assert page.eval_on_selector("#note-view", "e => e.textContent") == text  # exactly the coded text

    # Click a code: its evidence is marked (offsets after the emoji and CRLFs) and scrolled to.
    first, second, third = order
    page.click(f".code-select[data-code='{first}']")
    expect(page.locator(f".code-select[data-code='{first}']")).to_have_attribute("aria-pressed", "true")
    marks = check_marks(page, text, codes[first])
    assert max(m["start"] for m in marks) > text.index(EMOJI)
    expect(page.locator("#note-view mark").first).to_be_in_viewport()
    expect(page.locator("#evidence-list li")).to_have_count(len(marks))
    axe_check(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

    # Click a highlight of another code: that code is selected.
    other = page.locator("#note-view .ev-other").first
    if other.count():
        target = other.get_attribute("data-codes").split()[0]
        other.click()
        expect(page.locator(f".code-select[data-code='{target}']")).to_have_attribute("aria-pressed", "true")
        check_marks(page, text, codes[target])

    # Keyboard alone from here: Tab, Shift+Tab, Enter, Space, arrows (and typing the search).
    press_until(page, "Shift+Tab", lambda a: "skip-link" in a["cls"], limit=60)  # back to the top: no trap
    page.keyboard.press("Enter")  # skip to the main content
    press_until(page, "Tab", lambda a: a["id"] == "code-select-0")
    page.keyboard.press("Tab")
    assert "accept" in active(page)["cls"] and active(page)["code"] == first
    page.keyboard.press("Space")
    assert decision_of(page, first) == "accepted"
    assert active(page)["pressed"] == "true"
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("ArrowDown")
    assert active(page)["id"] == "code-select-1"
    if active(page)["pressed"] != "true":
        page.keyboard.press("Enter")
    assert active(page)["pressed"] == "true"
    check_marks(page, text, codes[second])
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowRight")
    assert "reject" in active(page)["cls"] and active(page)["code"] == second
    page.keyboard.press("Enter")
    assert decision_of(page, second) == "rejected"

    # In the text: the arrows move between highlights, Enter selects a highlight's code.
    press_until(page, "Shift+Tab", lambda a: a["id"] == "note-view", limit=10)
    now = press_until(page, "ArrowRight", lambda a: a["codes"] is not None, limit=30)
    target = now["codes"].split()[0]
    page.keyboard.press("Enter")
    assert active(page)["tag"] == "MARK" and active(page)["code"] == target
    expect(page.locator(f".code-select[data-code='{target}']")).to_have_attribute("aria-pressed", "true")

    # Add a code the model did not suggest: type, Down arrow to it, Enter.
    missing = next(code for code in TRIGGER_CODES if code not in codes)
    press_until(page, "Tab", lambda a: a["id"] == "code-search")
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/codes"):
        page.keyboard.insert_text(missing)  # one input event: one search, no stale partial results
    options = page.locator("#code-options [role='option']")
    expect(options.filter(has_text=missing).first).to_be_visible()
    index = next(i for i, label in enumerate(options.all_inner_texts()) if label.startswith(missing))
    for _ in range(index + 1):
        page.keyboard.press("ArrowDown")
    assert page.get_attribute("#code-search", "aria-activedescendant") == f"code-option-{index}"
    axe_check(page)  # with the list open, decisions pressed, a code selected
    page.keyboard.press("Enter")
    assert decision_of(page, missing) == "added"
    expect(page.locator("#status")).to_contain_text(f"{missing} added")

    # Export, still by keyboard.
    press_until(page, "Tab", lambda a: a["id"] == "export-json")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    page.keyboard.press("Tab")
    assert active(page)["id"] == "export-fhir"
    posted, bundle = export_fhir(page, lambda: page.keyboard.press("Enter"))

    assert exported["note_id"] == "note-1" and exported["model"] == answer["model"]
    assert exported["text_sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert "text" not in exported  # the note itself stays out; the evidence passages are in
    decisions = {d["code"]: d for d in exported["decisions"]}
    assert {code: d["decision"] for code, d in decisions.items()} == {
        first: "accepted", second: "rejected", missing: "added"}
    assert [d["code"] for d in exported["undecided"]] == [third]
    for code in (first, second):
        assert decisions[code]["probability"] == codes[code]["probability"]
        assert [(e["start"], e["end"], e["text"]) for e in decisions[code]["evidence"]] == sorted(
            (e["start"], e["end"], e["text"]) for e in codes[code]["evidence"])
    assert decisions[missing]["probability"] is None and decisions[missing]["evidence"] == []
    assert decisions[missing]["system"] == "icd10cm" and decisions[missing]["description"]
    assert posted == exported["decisions"]  # the server's bundle states the very decisions of the JSON

    parsed = fhir_bundle.Bundle(bundle)  # raises on unknown or missing required elements
    assert parsed.type == "collection" and len(parsed.entry) == 3
    resources = {r["code"]["coding"][0]["code"]: r for r in (e["resource"] for e in bundle["entry"])}
    assert {r["resourceType"] for r in resources.values()} == {"Condition"}
    status = {code: r["verificationStatus"]["coding"][0] for code, r in resources.items()}
    assert {code: s["code"] for code, s in status.items()} == {
        first: "confirmed", second: "refuted", missing: "confirmed"}
    assert {s["system"] for s in status.values()} == {"http://terminology.hl7.org/CodeSystem/condition-ver-status"}
    for code, decision in ((first, "accepted"), (second, "rejected"), (missing, "added")):
        resource = resources[code]
        assert resource["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
        assert resource["subject"]["identifier"] == {"system": "urn:clem-icd:note-id", "value": "note-1"}
        review = [e for e in resource["extension"] if e["url"].endswith("/StructureDefinition/review-decision")]
        assert review == [{"url": "https://github.com/clem-icd/clem-icd/fhir/StructureDefinition/review-decision",
                           "valueCode": decision}]
    spans = [{x["url"]: next(iter(v for k, v in x.items() if k.startswith("value"))) for x in ev["extension"][0]["extension"]}
             for ev in resources[first]["evidence"]]
    assert spans and all(text[s["start"]:s["end"]] == s["text"] for s in spans)
    assert "evidence" not in resources[missing]


def test_loaded_file_keeps_its_line_endings_through_edits(visit):
    from playwright.sync_api import expect

    page = visit().page
    expect(page.locator("#model-info")).to_contain_text("8 codes")
    # A .txt file dropped on the text box: kept as it is (CRLF), its name becomes the note id.
    dropped = review_note(seed=4)
    page.eval_on_selector("#note-text", """(box, text) => {
        const data = new DataTransfer();
        data.items.add(new File([text], "dropped-note.txt", {type: "text/plain"}));
        box.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", dropped)
    expect(page.locator("#note-id")).to_have_value("dropped-note")
    expect(page.locator("#note-text")).to_have_value(dropped.replace("\r\n", "\n"))
    expect(page.locator("#note-stats")).to_contain_text("CRLF")

    note = review_note(seed=2)
    page.set_input_files("#note-file", files=[{"name": "clinic-visit.txt", "mimeType": "text/plain",
                                                "buffer": note.encode("utf-8")}])
    expect(page.locator("#note-id")).to_have_value("clinic-visit")
    expect(page.locator("#note-text")).to_have_value(note.replace("\r\n", "\n"))
    # Typing at the end and after the first line break leaves the other CRLFs as they were.
    page.focus("#note-text")
    page.keyboard.press("Control+End")
    page.keyboard.type(" Seen again.")
    first_break = note.replace("\r\n", "\n").index("\n") + 1
    page.eval_on_selector("#note-text", "(e, i) => e.setSelectionRange(i, i)", first_break)
    page.keyboard.type("Ward 4. ")
    raw_break = note.index("\r\n") + 2
    expected = note[:raw_break] + "Ward 4. " + note[raw_break:] + " Seen again."

    text, answer = code_note(page)
    assert text == expected
    assert answer["results"][0]["id"] == "clinic-visit"
    assert page.eval_on_selector("#note-view", "e => e.textContent") == text
    with_evidence = [c for c in answer["results"][0]["codes"] if c["evidence"]]
    if with_evidence:
        page.click(f".code-select[data-code='{with_evidence[-1]['code']}']")
        check_marks(page, text, with_evidence[-1])


def test_messages_token_busy_limits_truncation_no_evidence(visit):
    from fhirclient.models import bundle as fhir_bundle
    from playwright.sync_api import expect

    # A wrong token: the model card and the coding both get 401, and the page says so.
    wrong = visit("wrong-token-0000000000")
    alert = wrong.page.get_by_role("alert")
    expect(alert).to_contain_text("401")
    expect(wrong.page.locator("#token-error")).to_have_text("The server did not accept this token.")
    expect(wrong.page.locator("#token")).to_have_attribute("aria-invalid", "true")
    wrong.page.fill("#note-text", "Admitted with pneumonia.")
    wrong.page.click("#code-button")
    expect(alert).to_contain_text("did not accept the access token")

    v = visit()
    page = v.page
    alert = page.get_by_role("alert")
    expect(page.locator("#model-info")).to_contain_text("8 codes")
    page.click("#code-button")
    expect(alert).to_contain_text("The note is empty")

    # Busy (503 with Retry-After), too large (413) and timeout (504), as the server words them.
    page.fill("#note-text", "Admitted with pneumonia.")
    for status, headers, wanted in ((503, {"Retry-After": "2"}, ["busy", "503", "2 seconds"]),
                                    (413, {}, ["too large", "413"]),
                                    (504, {}, ["took too long", "504"])):
        page.route("**/v1/code", _fulfil(status, headers))
        page.click("#code-button")
        for words in wanted:
            expect(alert).to_contain_text(words)
        page.unroute("**/v1/code")

    # A code without evidence is flagged, in its row and when selected; a procedure code becomes
    # a FHIR Procedure (completed when accepted, unknown when rejected).
    def canned(route):
        route.fulfill(status=200, content_type="application/json", body=json.dumps({
            "model": {"name": "model", "codes": 8, "threshold": 0.5, "explain": "attention", "version": "test"},
            "results": [{"id": "note-1", "truncated": False, "codes": [
                {"code": "I10", "system": "icd10cm", "description": "Essential (primary) hypertension",
                 "probability": 0.9, "evidence": []},
                {"code": "0DT70ZZ", "system": "icd10pcs", "description": "Resection of stomach, pylorus",
                 "probability": 0.8, "evidence": [{"start": 14, "end": 23, "score": 0.5, "text": "pneumonia"}]},
                {"code": "0DT80ZZ", "system": "icd10pcs", "description": "Resection of small intestine",
                 "probability": 0.7, "evidence": []}]}]}))

    page.route("**/v1/code", canned)
    page.click("#code-button")
    expect(page.locator(".code-row[data-code='I10'] .no-evidence")).to_have_text("⚠ No evidence found for this code")
    expect(page.locator("#warnings")).to_contain_text("No evidence found for these codes: I10, 0DT80ZZ")
    page.click(".code-select[data-code='I10']")
    expect(page.locator("#evidence-empty")).to_contain_text("No evidence found for this code")
    expect(alert).to_have_text("")
    page.unroute("**/v1/code")
    page.click(".accept[data-code='0DT70ZZ']")
    page.click(".reject[data-code='0DT80ZZ']")
    page.click(".reject[data-code='I10']")
    _, bundle = export_fhir(page, lambda: page.click("#export-fhir"))
    fhir_bundle.Bundle(bundle)
    resources = {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in bundle["entry"]}
    assert {code: (r["resourceType"], r.get("status")) for code, r in resources.items()} == {
        "I10": ("Condition", None), "0DT70ZZ": ("Procedure", "completed"), "0DT80ZZ": ("Procedure", "unknown")}
    assert resources["0DT70ZZ"]["code"]["coding"][0]["system"] == "http://www.cms.gov/Medicare/Coding/ICD10"
    evidence = [e for e in resources["0DT70ZZ"]["extension"] if e["url"].endswith("/evidence-span")]
    assert [{x["url"]: x.get("valueInteger", x.get("valueString", x.get("valueDecimal"))) for x in e["extension"]}
            for e in evidence] == [{"start": 14, "end": 23, "score": 0.5, "text": "pneumonia"}]

    # A note longer than the model's 512 tokens: the truncation warning.
    _, planted, _ = trigger_note(np.random.default_rng(3))
    page.fill("#note-text", planted + FILLER * 200)
    text, answer = code_note(page)
    assert answer["results"][0]["truncated"] is True
    expect(page.locator("#truncation-warning")).to_be_visible()
    expect(page.locator("#truncation-warning")).to_contain_text("only its beginning was coded")
    assert page.eval_on_selector("#note-view", "e => e.textContent") == text
