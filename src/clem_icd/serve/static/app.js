/* CLEM-ICD coding review page: plain JavaScript, no dependencies, nothing loaded from elsewhere.
 *
 * Privacy: the note text is protected health information. This script never logs it, never
 * stores it (only the access token may go to sessionStorage, and only when the coder asks) and
 * never puts it in a message: error messages show the server's one-line `detail`, and for 422
 * lists only each item's `loc` and `msg`, never its `input`.
 *
 * Offsets: the server's evidence offsets count Unicode code points into the note exactly as it
 * was sent (Python string offsets); JavaScript strings count UTF-16 code units. The page keeps
 * the string it sent (`review.text`), builds a code point -> UTF-16 index table from it and shows
 * that very string in a <pre> (white-space: pre-wrap), each highlighted passage being a <mark>
 * whose textContent is exactly note[start:end].
 *
 * Line endings: a <textarea> turns CRLF and CR into LF in its value. The page therefore keeps the
 * note's raw string (`note.raw`) beside the textarea: a loaded or dropped .txt file and pasted
 * text are kept as they are (CRLF included), and typing in the textarea is applied to the raw
 * string as an edit of the changed stretch only, so the untouched parts keep their line endings.
 * What is sent is `note.raw`.
 *
 * Scores: each code has `score` and, when the model's scores are probabilities, `probability`.
 * A model fused by reciprocal rank (GET /v1/model: score_kind "rank score") gives rank scores,
 * which the page shows and exports as rank scores, never as a probability or a percentage.
 */
"use strict";

(() => {
  const PROFILE_BASE = "https://github.com/clem-icd/clem-icd/fhir/StructureDefinition";
  const DECISION_URL = `${PROFILE_BASE}/review-decision`;
  const PROBABILITY_URL = `${PROFILE_BASE}/probability`;
  const RANK_SCORE_URL = `${PROFILE_BASE}/rank-score`;
  const EVIDENCE_URL = `${PROFILE_BASE}/evidence-span`;
  const NOTE_SYSTEM = "urn:clem-icd:note-id";
  const VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
  const SYSTEM_URIS = {
    icd10cm: "http://hl7.org/fhir/sid/icd-10-cm",
    icd10pcs: "http://www.cms.gov/Medicare/Coding/ICD10",
    icd9cm: "http://hl7.org/fhir/sid/icd-9-cm",
    icd9pcs: "http://hl7.org/fhir/sid/icd-9-cm",
  };
  const PROCEDURE_SYSTEMS = new Set(["icd10pcs", "icd9pcs"]);
  const TOKEN_KEY = "clem-icd.token";
  const REQUEST_TIMEOUT_MS = 180000;
  const MAX_FILE_BYTES = 20 * 1024 * 1024;

  const $ = (id) => document.getElementById(id);
  const el = {};

  /* ------------------------------------------------------------------ state */

  const note = { raw: "", shown: "", pendingPaste: null };
  let model = null;          // GET /v1/model
  let review = null;         // the coded note under review (see startReview)
  let busy = false;
  let requestSeq = 0;
  let modelRetry = null;

  /* ------------------------------------------------------------ text helpers */

  const normalizeNewlines = (s) => s.replace(/\r\n?/g, "\n");

  /** Index into `raw` of index `n` of normalizeNewlines(raw) (a CRLF is one character there). */
  function rawIndex(raw, n) {
    let i = 0;
    for (let k = 0; k < n && i < raw.length; k += 1) {
      i += raw.charCodeAt(i) === 13 && raw.charCodeAt(i + 1) === 10 ? 2 : 1;
    }
    return i;
  }

  /** raw[0:start] + inserted + raw[end:], such that its normalized form is `view` (the textarea's
   *  value after the edit). Lone CRs just before a joint that now meets an LF would pair with it
   *  into a CRLF (one line break, where the textarea shows two): those CRs become LFs. */
  function spliceRaw(raw, start, end, inserted, view) {
    let left = raw.slice(0, start);
    let middle = inserted;
    const right = raw.slice(end);
    const crsToLf = (s) => s.replace(/\r+$/, (crs) => "\n".repeat(crs.length));
    if (left.endsWith("\r") && (middle || right).startsWith("\n")) left = crsToLf(left);
    if (middle.endsWith("\r") && right.startsWith("\n")) middle = crsToLf(middle);
    const joined = left + middle + right;
    return normalizeNewlines(joined) === view ? joined : view;  // out of step: the textarea wins
  }

  /** UTF-16 index of every code point index 0..n (n = number of code points). */
  function codePointTable(text) {
    const table = [];
    let unit = 0;
    for (const ch of text) {
      table.push(unit);
      unit += ch.length;
    }
    table.push(unit);
    return table;
  }

  function countCodePoints(text) {
    let n = 0;
    for (let i = 0; i < text.length; i += 1) {
      const c = text.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
        const d = text.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) i += 1;
      }
      n += 1;
    }
    return n;
  }

  function lineEndings(text) {
    const crlf = (text.match(/\r\n/g) || []).length;
    const cr = (text.match(/\r(?!\n)/g) || []).length;
    const lf = (text.match(/(^|[^\r])\n/g) || []).length;
    const kinds = [crlf && "CRLF", lf && "LF", cr && "CR"].filter(Boolean);
    return kinds.length === 0 ? "none" : kinds.length === 1 ? kinds[0] : "mixed";
  }

  /** The last two parts of a path-like name (an encoder may be named by its folder). */
  const shortName = (name) => name.replace(/[\\/]+$/, "").split(/[\\/]/).slice(-2).join("/");

  const formatNumber = (n) => n.toLocaleString("en-US");

  /** What the model's scores are called: "probability" or "rank score" (GET /v1/model). */
  const scoreName = () => (model && model.score_kind === "rank score" ? "rank score" : "probability");

  function formatProbability(p) {
    if (typeof p !== "number" || !Number.isFinite(p)) return "—";
    const percent = p * 100;
    return `${percent >= 10 || percent === 0 ? percent.toFixed(0) : percent.toFixed(1)}%`;
  }

  function shorten(text, max) {
    const flat = text.replace(/\s+/g, " ").trim();
    const chars = Array.from(flat);
    return chars.length <= max ? flat : `${chars.slice(0, max - 1).join("")}…`;
  }

  /* ------------------------------------------------------------- messages */

  function announce(message) {
    el.status.textContent = message;
  }

  // The alert region stays in the page (empty when there is no error), so that screen readers
  // announce each new message.
  function showError(message) {
    el.error.textContent = message;
  }

  function clearError() {
    el.error.textContent = "";
  }

  class ApiError extends Error {
    constructor(status, detail, retryAfter, kind) {
      super(`HTTP ${status}`);
      this.status = status;
      this.detail = detail;
      this.retryAfter = retryAfter;
      this.kind = kind || "http";
    }
  }

  /** The server's detail as one short line; for a 422 list only loc and msg (never input). */
  function detailText(body) {
    if (!body || body.detail === undefined || body.detail === null) return "";
    let text;
    if (Array.isArray(body.detail)) {
      text = body.detail.map((item) => {
        if (!item || typeof item !== "object") return String(item);
        const loc = Array.isArray(item.loc) ? item.loc.join(".") : "";
        return loc ? `${loc}: ${item.msg || ""}` : String(item.msg || "");
      }).join("; ");
    } else {
      text = String(body.detail);
    }
    text = text.replace(/\s+/g, " ").trim();
    return text.length > 300 ? `${text.slice(0, 299)}…` : text;
  }

  function retrySeconds(value) {
    if (!value) return null;
    if (/^\d+$/.test(value.trim())) return Number(value.trim());
    const when = Date.parse(value);
    return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
  }

  function describeError(err) {
    const detail = err.detail ? `: ${err.detail}` : "";
    if (err.kind === "timeout") {
      return "No answer from the server in time (the page stopped waiting after 3 minutes). "
        + "Try again, or choose the attention evidence method, which is the fastest.";
    }
    if (err.kind === "network") {
      return "Could not reach the server. Check that it is running and that this page was opened from it, "
        + "then try again.";
    }
    switch (err.status) {
      case 401:
      case 403:
        return `The server did not accept the access token (${err.status}${err.status === 401 ? " Unauthorized" : " Forbidden"}). `
          + "Enter the right token in “Access token” and try again.";
      case 413: {
        const limit = model && model.max_chars ? ` It accepts notes of at most ${formatNumber(model.max_chars)} characters.` : "";
        return `The note is too large for this server (413)${detail}.${limit} Shorten the note or split it, then try again.`;
      }
      case 422:
        return `The server could not accept the request (422)${detail}.`;
      case 503: {
        const seconds = retrySeconds(err.retryAfter);
        const wait = seconds !== null
          ? `Try again in ${seconds} second${seconds === 1 ? "" : "s"} (the server asked to wait that long: Retry-After ${seconds}).`
          : "Try again in a moment.";
        return `The server is busy or still starting (503)${detail}. ${wait}`;
      }
      case 504:
        return `The server took too long to code the note (504 timeout)${detail}. `
          + "Try again, or choose the attention evidence method, which is the fastest.";
      default:
        return `The server answered with an error (${err.status})${detail}.`;
    }
  }

  /* ------------------------------------------------------------------ HTTP */

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Accept", "application/json");
    const token = el.token.value.trim();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), options.timeoutMs || REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(path, {
        method: options.method || "GET",
        headers,
        body: options.body,
        signal: controller.signal,
        cache: "no-store",
        credentials: "same-origin",
        referrerPolicy: "no-referrer",
      });
    } catch (error) {
      throw new ApiError(0, "", null, controller.signal.aborted ? "timeout" : "network");
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (response.status === 401 || response.status === 403) {
      tokenRefused(token ? "The server did not accept this token." : "The server asks for a token.");
    } else if (response.ok) {
      tokenRefused("");
    }
    if (!response.ok) {
      throw new ApiError(response.status, detailText(body), response.headers.get("Retry-After"));
    }
    return body;
  }

  /* ------------------------------------------------------------ token */

  /** The token field's own error (beside the field, as well as in the alert). */
  function tokenRefused(message) {
    el.tokenError.textContent = message;
    if (message) el.token.setAttribute("aria-invalid", "true");
    else el.token.removeAttribute("aria-invalid");
  }

  function restoreToken() {
    let saved = null;
    try {
      saved = window.sessionStorage.getItem(TOKEN_KEY);
    } catch (error) {
      saved = null;
    }
    if (saved) {
      el.token.value = saved;
      el.remember.checked = true;
    }
  }

  function storeToken() {
    try {
      if (el.remember.checked && el.token.value.trim()) {
        window.sessionStorage.setItem(TOKEN_KEY, el.token.value.trim());
      } else {
        window.sessionStorage.removeItem(TOKEN_KEY);
      }
    } catch (error) {
      /* storage unavailable: the token then lives in the field only */
    }
  }

  /* ------------------------------------------------------------ model info */

  async function loadModelInfo() {
    try {
      model = await api("v1/model", { timeoutMs: 30000 });
    } catch (err) {
      model = null;
      clearTimeout(modelRetry);
      if (err.status === 503) {  // still loading: ask again when the server says
        const seconds = retrySeconds(err.retryAfter);
        modelRetry = setTimeout(loadModelInfo, Math.min(30, seconds === null ? 5 : Math.max(1, seconds)) * 1000);
      }
      if (err.status === 401 && !el.token.value.trim()) {
        el.modelInfo.textContent = "Model: enter the access token to connect.";
      } else {
        el.modelInfo.textContent = "Model: not connected.";
        showError(describeError(err));
      }
      return;
    }
    clearError();
    const parts = [
      `${model.name}`,
      model.encoder && model.head ? `${shortName(String(model.encoder))} + ${model.head}` : null,
      Number.isFinite(model.codes) ? `${formatNumber(model.codes)} codes` : null,
      Number.isFinite(model.threshold) ? `threshold ${model.threshold.toFixed(2)}` : null,
      Number.isFinite(model.max_length) ? `reads the first ${formatNumber(model.max_length)} tokens of a note` : null,
      scoreName() === "rank score" ? "scores are rank scores, not probabilities" : null,
      model.version ? `version ${model.version}` : null,
    ].filter(Boolean);
    el.modelInfo.textContent = `Model: ${parts.join(" · ")}`;
    const name = scoreName();
    el.thresholdLabel.textContent = `${name.charAt(0).toUpperCase()}${name.slice(1)} threshold (optional)`;
    const methods = Array.isArray(model.explain_methods) ? model.explain_methods.map(String) : [];
    if (methods.length) {
      const current = el.explain.value;
      el.explain.textContent = "";
      for (const method of methods) {
        const option = document.createElement("option");
        option.value = method;
        option.textContent = method;
        el.explain.append(option);
      }
      el.explain.value = methods.includes(current) ? current : methods.includes("attention") ? "attention" : methods[0];
    }
    updateNoteStats();
  }

  /* ------------------------------------------------------------ note input */

  /** Brings note.raw in line with the textarea after an edit of its (normalized) value. */
  function syncFromTextarea() {
    const now = el.noteText.value;
    const before = note.shown;
    if (now === before) return;
    if (normalizeNewlines(note.raw) !== before) {
      note.raw = now;  // out of step (should not happen): the textarea wins
    } else {
      let prefix = 0;
      const shorter = Math.min(before.length, now.length);
      while (prefix < shorter && before.charCodeAt(prefix) === now.charCodeAt(prefix)) prefix += 1;
      let suffix = 0;
      while (suffix < shorter - prefix
             && before.charCodeAt(before.length - 1 - suffix) === now.charCodeAt(now.length - 1 - suffix)) suffix += 1;
      let inserted = now.slice(prefix, now.length - suffix);
      if (note.pendingPaste !== null && normalizeNewlines(note.pendingPaste) === inserted) inserted = note.pendingPaste;
      note.raw = spliceRaw(note.raw, rawIndex(note.raw, prefix), rawIndex(note.raw, before.length - suffix),
                           inserted, now);
    }
    note.pendingPaste = null;
    note.shown = now;
  }

  function setNote(raw) {
    note.raw = raw;
    el.noteText.value = raw;
    note.shown = el.noteText.value;
    note.pendingPaste = null;
    noteChanged();
  }

  function noteChanged() {
    updateNoteStats();
    if (review) updateWarnings();
  }

  /** Inserts `text` at the textarea's selection keeping its line endings in note.raw. */
  function insertRaw(text) {
    syncFromTextarea();
    el.noteText.focus();
    const start = el.noteText.selectionStart;
    const end = el.noteText.selectionEnd;
    note.pendingPaste = text;
    let done = false;
    try {
      // execCommand keeps the browser's undo history; its input event carries the raw text over.
      done = document.execCommand("insertText", false, normalizeNewlines(text));
    } catch (error) {
      done = false;
    }
    if (done) {
      syncFromTextarea();  // nothing left to do when the input event has already run
    } else {
      el.noteText.setRangeText(normalizeNewlines(text), start, end, "end");
      note.raw = spliceRaw(note.raw, rawIndex(note.raw, start), rawIndex(note.raw, end), text, el.noteText.value);
      note.shown = el.noteText.value;
    }
    note.pendingPaste = null;
    noteChanged();
  }

  function updateNoteStats() {
    const n = countCodePoints(note.raw);
    if (!note.raw) {
      el.noteStats.textContent = "";
      return;
    }
    const endings = lineEndings(note.raw);
    const limit = model && model.max_chars ? ` of at most ${formatNumber(model.max_chars)}` : "";
    const endingText = endings === "none" ? "" : `, ${endings} line endings`;
    el.noteStats.textContent = `Now ${formatNumber(n)} characters${limit}${endingText}.`;
  }

  async function readTextFile(file) {
    if (file.size > MAX_FILE_BYTES) {
      throw new Error(`The file is larger than ${MAX_FILE_BYTES / 1024 / 1024} MB; load a plain-text note.`);
    }
    const bytes = await file.arrayBuffer();
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);  // drops a leading BOM
    } catch (error) {
      throw new Error("The file is not UTF-8 text; save it as UTF-8 plain text and load it again.");
    }
  }

  function checkedText(text) {
    if (text.includes("\u0000")) throw new Error("The file holds binary data, not a plain-text note.");
    return text;
  }

  function noteIdFromFileName(name) {
    const base = name.replace(/\.[^.]*$/, "").trim();
    return base || "note-1";
  }

  async function loadFile(file) {
    if (!file) return;
    clearError();
    let text;
    try {
      text = checkedText(await readTextFile(file));
    } catch (error) {
      showError(error.message);
      return;
    }
    setNote(text);
    el.noteId.value = noteIdFromFileName(file.name);
    const endings = lineEndings(text);
    announce(`Loaded ${file.name}: ${formatNumber(countCodePoints(text))} characters`
      + `${endings === "none" ? "" : `, ${endings} line endings kept as they are`}.`);
  }

  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");

  /* ------------------------------------------------------------ coding */

  function readOptions() {
    let threshold = null;
    let topK = null;
    const mustBe = `The ${scoreName()} threshold must be a number between 0 and 1.`;
    if (el.threshold.validity.badInput) throw new Error(mustBe);
    if (el.threshold.value.trim() !== "") {
      threshold = Number(el.threshold.value);
      if (!Number.isFinite(threshold) || threshold < 0 || threshold > 1) {
        throw new Error(mustBe);
      }
    }
    if (el.topK.validity.badInput) throw new Error("The number of codes must be a whole number of at least 1.");
    if (el.topK.value.trim() !== "") {
      topK = Number(el.topK.value);
      if (!Number.isInteger(topK) || topK < 1) throw new Error("The number of codes must be a whole number of at least 1.");
    }
    return { threshold, topK };
  }

  function setBusy(value) {
    busy = value;
    el.codeButton.setAttribute("aria-disabled", value ? "true" : "false");
    el.codeButton.textContent = value ? "Coding…" : "Code the note";
    el.review.setAttribute("aria-busy", value ? "true" : "false");
  }

  async function codeNote(event) {
    if (event) event.preventDefault();
    if (busy) return;
    syncFromTextarea();
    clearError();
    const text = note.raw;
    if (!text.trim()) {
      showError("The note is empty: paste, type or load a note first.");
      el.noteText.focus();
      return;
    }
    if (model && model.max_chars && countCodePoints(text) > model.max_chars) {
      showError(`The note is too large for this server: it has ${formatNumber(countCodePoints(text))} characters `
        + `and the server accepts at most ${formatNumber(model.max_chars)}. Shorten the note or split it.`);
      return;
    }
    let options;
    try {
      options = readOptions();
    } catch (error) {
      showError(error.message);
      return;
    }
    const noteId = el.noteId.value.trim() || "note-1";
    const explain = el.explain.value || "attention";
    const body = {
      notes: [{ id: noteId, text }],
      top_k: options.topK,
      threshold: options.threshold,
      explain,
      format: "json",
    };
    const seq = ++requestSeq;
    setBusy(true);
    announce("Coding the note…");
    try {
      const data = await api("v1/code", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (seq !== requestSeq) return;
      const results = data && Array.isArray(data.results) ? data.results : [];
      const result = results.find((r) => r && r.id === noteId) || results[0];
      if (!result) {
        announce("");
        showError("The server's answer held no result for this note.");
        return;
      }
      if (result.error) {
        announce("");
        showError(`The server could not code this note: ${String(result.error).slice(0, 300)}`);
        return;
      }
      startReview(text, noteId, data.model || {}, result, explain);
    } catch (err) {
      if (seq !== requestSeq) return;
      announce("");
      showError(err instanceof ApiError ? describeError(err) : "Something went wrong while coding the note.");
    } finally {
      if (seq === requestSeq) setBusy(false);
    }
  }

  /* ------------------------------------------------------------ review */

  /** Evidence spans with their UTF-16 offsets; spans whose offsets do not fit the text are dropped. */
  function convertEvidence(spans, text, table, counts) {
    const out = [];
    for (const span of Array.isArray(spans) ? spans : []) {
      const start = span && span.start;
      const end = span && span.end;
      if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end >= table.length) {
        counts.bad += 1;
        continue;
      }
      const u0 = table[start];
      const u1 = table[end];
      const slice = text.slice(u0, u1);
      if (typeof span.text === "string" && span.text !== slice) {
        counts.bad += 1;
        continue;
      }
      out.push({ start, end, score: typeof span.score === "number" ? span.score : null, text: slice, u0, u1 });
    }
    out.sort((a, b) => a.u0 - b.u0 || a.u1 - b.u1);
    return out;
  }

  function startReview(text, noteId, modelInfo, result, explain) {
    const replaced = review ? review.items.filter((item) => item.decision !== "undecided").length : 0;
    const table = codePointTable(text);
    const counts = { bad: 0 };
    const items = (Array.isArray(result.codes) ? result.codes : []).map((code) => ({
      code: String(code.code),
      system: code.system ? String(code.system) : "icd10cm",
      description: code.description ? String(code.description) : "",
      probability: typeof code.probability === "number" ? code.probability : null,
      // Records written before `score` existed carry only their probability.
      score: typeof code.score === "number" ? code.score : typeof code.probability === "number" ? code.probability : null,
      evidence: convertEvidence(code.evidence, text, table, counts),
      decision: "undecided",
      source: "model",
    }));
    review = {
      text, noteId, explain, table,
      model: modelInfo,
      truncated: Boolean(result.truncated),
      badSpans: counts.bad,
      items,
      selected: null,
    };
    el.review.hidden = false;
    renderCodeList();
    renderNote();
    renderEvidencePanel();
    updateWarnings();
    const noEvidence = items.filter((item) => item.evidence.length === 0).length;
    const parts = [`${items.length} code${items.length === 1 ? "" : "s"} suggested for note ${noteId}.`];
    if (review.truncated) parts.push("Warning: the note was truncated; only its beginning was read.");
    if (noEvidence) parts.push(`${noEvidence} code${noEvidence === 1 ? " has" : "s have"} no evidence.`);
    if (replaced) parts.push(`${replaced === 1 ? "The decision" : `The ${replaced} decisions`} of the previous review ${replaced === 1 ? "was" : "were"} replaced.`);
    parts.push("Select a code to see its evidence.");
    announce(parts.join(" "));
  }

  const findItem = (code) => (review ? review.items.find((item) => item.code === code) : undefined);
  const itemIndex = (item) => review.items.indexOf(item);

  function updateWarnings() {
    if (!review) return;
    el.warnings.textContent = "";
    const add = (text) => {
      const p = document.createElement("p");
      p.className = "message warning";
      p.textContent = text;
      el.warnings.append(p);
      return p;
    };
    if (review.truncated) {
      const limit = (model && model.max_length) || review.model.max_length;
      add(`Truncated note: the note is longer than the model reads${limit ? ` (${formatNumber(limit)} tokens)` : ""}, `
        + "so only its beginning was coded. Codes and evidence cover that beginning only; review the rest yourself.")
        .id = "truncation-warning";
    }
    const missing = review.items.filter((item) => item.source === "model" && item.evidence.length === 0);
    if (missing.length) {
      add(`No evidence found for ${missing.length === 1 ? "this code" : "these codes"}: `
        + `${missing.map((item) => item.code).join(", ")}. Check the note before accepting.`);
    }
    if (review.badSpans) {
      add(`${review.badSpans} evidence passage${review.badSpans === 1 ? " does" : "s do"} not match the text `
        + "and could not be shown.");
    }
    syncFromTextarea();
    if (note.raw !== review.text) {
      add("The note in the editor has changed since it was coded. This review is of the text below; "
        + "code the note again to review the new text.");
    }
  }

  function renderCodeList() {
    el.codeList.textContent = "";
    for (const item of review.items) el.codeList.append(codeRow(item));
    updateSummary();
  }

  function updateSummary() {
    const counts = { accepted: 0, rejected: 0, added: 0, undecided: 0 };
    for (const item of review.items) counts[item.decision] += 1;
    el.codesSummary.textContent = review.items.length === 0
      ? "The model suggested no code for this note. Add codes below if needed."
      : `${counts.accepted} accepted, ${counts.rejected} rejected, ${counts.added} added, ${counts.undecided} undecided.`;
  }

  function visuallyHidden(text) {
    const span = document.createElement("span");
    span.className = "vh";
    span.textContent = text;
    return span;
  }

  function codeRow(item) {
    const index = itemIndex(item);
    const li = document.createElement("li");
    li.className = "code-row";
    li.dataset.code = item.code;

    const select = document.createElement("button");
    select.type = "button";
    select.className = "code-select";
    select.id = `code-select-${index}`;
    select.dataset.code = item.code;
    const codeId = document.createElement("span");
    codeId.className = "code-id";
    codeId.textContent = item.code;
    const description = document.createElement("span");
    description.className = "code-desc";
    description.textContent = item.description || "(no description)";
    const probability = document.createElement("span");
    probability.className = "code-prob";
    if (item.score === null) {
      probability.textContent = "added";
    } else {
      if (item.probability !== null) {
        probability.append(visuallyHidden("probability "), formatProbability(item.probability));
      } else {  // a rank score is no probability: no percent sign
        probability.append(visuallyHidden("rank score "), Number.isFinite(item.score) ? item.score.toFixed(3) : "—");
        probability.title = "Rank score (reciprocal rank fusion), not a probability";
      }
      const bar = document.createElement("span");
      bar.className = "prob-bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(1, item.score)) * 100}%`;
      bar.append(fill);
      probability.append(bar);
    }
    select.append(codeId, " ", description, " ", probability);

    const meta = document.createElement("div");
    meta.className = "code-meta";
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.id = `code-state-${index}`;
    meta.append(badge);
    if (item.source === "coder") {
      const added = document.createElement("span");
      added.className = "meta-note";
      added.textContent = "Added by the coder; no model evidence.";
      meta.append(added);
    } else if (item.evidence.length === 0) {
      const warn = document.createElement("span");
      warn.className = "no-evidence";
      warn.textContent = "⚠ No evidence found for this code";
      meta.append(warn);
    } else {
      const count = document.createElement("span");
      count.className = "meta-note";
      count.textContent = `${item.evidence.length} evidence passage${item.evidence.length === 1 ? "" : "s"}`;
      meta.append(count);
    }
    select.setAttribute("aria-describedby", badge.id);

    const group = document.createElement("div");
    group.className = "decision";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `Decision for ${item.code}`);
    if (item.source === "coder") {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.dataset.action = "remove";
      remove.dataset.code = item.code;
      remove.append("Remove", visuallyHidden(` ${item.code}`));
      group.append(remove);
    } else {
      for (const [action, label] of [["accepted", "Accept"], ["rejected", "Reject"]]) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = action === "accepted" ? "accept" : "reject";
        button.dataset.action = action;
        button.dataset.code = item.code;
        button.append(label, visuallyHidden(` ${item.code}`));
        group.append(button);
      }
    }
    li.append(select, meta, group);
    updateRow(item, li);
    return li;
  }

  function rowOf(item) {
    return Array.from(el.codeList.children).find((li) => li.dataset.code === item.code) || null;
  }

  function updateRow(item, li = rowOf(item)) {
    if (!li) return;
    li.dataset.decision = item.decision;
    const selected = review.selected === item.code;
    li.classList.toggle("selected", selected);
    li.querySelector(".code-select").setAttribute("aria-pressed", selected ? "true" : "false");
    const labels = { accepted: "Accepted", rejected: "Rejected", added: "Added", undecided: "Undecided" };
    li.querySelector(".badge").textContent = labels[item.decision];
    for (const button of li.querySelectorAll("button[data-action='accepted'], button[data-action='rejected']")) {
      button.setAttribute("aria-pressed", item.decision === button.dataset.action ? "true" : "false");
    }
  }

  function decide(item, decision) {
    item.decision = item.decision === decision ? "undecided" : decision;
    updateRow(item);
    updateSummary();
    const words = { accepted: "accepted", rejected: "rejected", undecided: "back to undecided" };
    announce(`${item.code} ${words[item.decision]}.`);
  }

  function removeAdded(item) {
    const li = rowOf(item);
    const next = li && (li.nextElementSibling || li.previousElementSibling);
    review.items.splice(itemIndex(item), 1);
    if (review.selected === item.code) review.selected = null;
    if (li) li.remove();
    updateSummary();
    renderNote();
    renderEvidencePanel();
    announce(`${item.code} removed.`);
    const target = next ? next.querySelector(".code-select") : el.codeSearch;
    target.focus();
  }

  /** Selects a code (or clears the selection when it is already selected). */
  function selectCode(code, { toggle = true, scroll = true } = {}) {
    if (!review) return;
    const previous = review.selected ? findItem(review.selected) : null;
    review.selected = toggle && review.selected === code ? null : code;
    if (previous) updateRow(previous);
    const item = review.selected ? findItem(review.selected) : null;
    if (item) updateRow(item);
    renderNote();
    renderEvidencePanel();
    if (!item) {
      announce("No code selected.");
      return;
    }
    const marks = el.noteView.querySelectorAll("mark");
    if (item.source === "coder") {
      announce(`${item.code} selected. Added by the coder; it has no model evidence.`);
    } else if (marks.length === 0) {
      announce(`${item.code} selected. No evidence found for this code.`);
    } else {
      announce(`${item.code} selected: ${marks.length} evidence passage${marks.length === 1 ? "" : "s"} highlighted in the text.`);
      if (scroll) scrollToMark(marks[0]);
    }
  }

  function scrollToMark(mark) {
    const view = el.noteView;
    const viewRect = view.getBoundingClientRect();
    const rect = mark.getBoundingClientRect();
    if (view.scrollHeight > view.clientHeight) {
      view.scrollTop += rect.top - viewRect.top - (view.clientHeight - rect.height) / 2;
    }
    const after = mark.getBoundingClientRect();
    if (after.top < 0 || after.bottom > window.innerHeight) mark.scrollIntoView({ block: "center", inline: "nearest" });
  }

  /** Non-overlapping ranges (UTF-16) of one code's evidence: overlapping spans merge into one. */
  function mergedRanges(evidence) {
    const ranges = [];
    for (const span of evidence) {
      if (span.u1 <= span.u0) continue;
      const last = ranges[ranges.length - 1];
      if (last && span.u0 < last.u1) {
        if (span.u1 > last.u1) {
          last.u1 = span.u1;
          last.end = span.end;
        }
        last.score = Math.max(last.score ?? -Infinity, span.score ?? -Infinity);
      } else {
        ranges.push({ u0: span.u0, u1: span.u1, start: span.start, end: span.end, score: span.score });
      }
    }
    return ranges;
  }

  function renderNote() {
    const text = review.text;
    const view = el.noteView;
    const fragment = document.createDocumentFragment();
    const selected = review.selected ? findItem(review.selected) : null;
    const marks = selected ? mergedRanges(selected.evidence) : [];
    const others = [];
    if (el.showAll.checked) {
      for (const item of review.items) {
        if (item === selected) continue;
        for (const span of item.evidence) if (span.u1 > span.u0) others.push({ u0: span.u0, u1: span.u1, code: item.code });
      }
    }

    const plain = (from, to) => {
      if (to <= from) return;
      const cuts = new Set([from, to]);
      for (const r of others) {
        if (r.u1 <= from || r.u0 >= to) continue;
        cuts.add(Math.max(from, r.u0));
        cuts.add(Math.min(to, r.u1));
      }
      const points = Array.from(cuts).sort((a, b) => a - b);
      for (let i = 0; i + 1 < points.length; i += 1) {
        const a = points[i];
        const b = points[i + 1];
        const codes = [];
        for (const r of others) if (r.u0 <= a && r.u1 >= b && !codes.includes(r.code)) codes.push(r.code);
        const piece = text.slice(a, b);
        if (codes.length === 0) {
          fragment.append(document.createTextNode(piece));
        } else {
          const span = document.createElement("span");
          span.className = "ev-other";
          span.tabIndex = -1;
          span.dataset.codes = codes.join(" ");
          span.dataset.u0 = String(a);
          span.title = `Evidence for ${codes.join(", ")}: select to review`;
          span.textContent = piece;
          fragment.append(span);
        }
      }
    };

    let position = 0;
    for (const range of marks) {
      plain(position, range.u0);
      const mark = document.createElement("mark");
      mark.className = "ev-selected";
      mark.tabIndex = -1;
      mark.dataset.code = selected.code;
      mark.dataset.start = String(range.start);
      mark.dataset.end = String(range.end);
      mark.dataset.u0 = String(range.u0);
      const score = typeof range.score === "number" && Number.isFinite(range.score) ? range.score.toFixed(3) : "";
      mark.dataset.score = score;
      mark.title = `Evidence for ${selected.code}${score ? ` (score ${score})` : ""}`;
      mark.textContent = text.slice(range.u0, range.u1);
      fragment.append(mark);
      position = range.u1;
    }
    plain(position, text.length);
    view.textContent = "";
    view.append(fragment);
  }

  function renderEvidencePanel() {
    const item = review && review.selected ? findItem(review.selected) : null;
    el.evidencePanel.hidden = !item;
    el.evidenceList.textContent = "";
    el.evidenceEmpty.hidden = true;
    if (!item) return;
    el.evidenceHeading.textContent = `Evidence for ${item.code}${item.description ? ` — ${item.description}` : ""}`;
    if (item.evidence.length === 0) {
      el.evidenceEmpty.hidden = false;
      el.evidenceEmpty.textContent = item.source === "coder"
        ? "Added by the coder: the model gave no evidence for this code."
        : "⚠ No evidence found for this code: the model pointed to no passage. Check the note before accepting.";
      return;
    }
    const marks = Array.from(el.noteView.querySelectorAll("mark"));
    marks.forEach((mark, i) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "evidence-link";
      button.dataset.mark = String(i);
      const score = mark.dataset.score;
      button.textContent = `“${shorten(mark.textContent, 70)}”${score ? ` (score ${score})` : ""}`;
      button.prepend(visuallyHidden(`Show passage ${i + 1}: `));
      li.append(button);
      el.evidenceList.append(li);
    });
  }

  /* ------------------------------------------------------------ note view keyboard */

  const highlights = () => Array.from(el.noteView.querySelectorAll("mark, .ev-other"));

  function highlightCode(node) {
    if (node.tagName === "MARK") return node.dataset.code;
    const codes = node.dataset.codes.split(" ");
    const current = codes.indexOf(review.selected);
    return codes[(current + 1) % codes.length];
  }

  /** Selects the code of a highlight and keeps focus at the same place in the re-drawn text. */
  function selectFromHighlight(node, { focus }) {
    const u0 = Number(node.dataset.u0);
    const code = highlightCode(node);
    selectCode(code, { toggle: false, scroll: false });
    if (!focus) return;
    const target = highlights().find((h) => h.tagName === "MARK" && Number(h.dataset.u0) <= u0
      && u0 < Number(h.dataset.u0) + h.textContent.length) || highlights().find((h) => h.tagName === "MARK");
    if (target) target.focus({ preventScroll: true });
  }

  function onNoteViewKey(event) {
    const list = highlights();
    const current = list.indexOf(event.target);
    const onHighlight = current >= 0;
    const key = event.key;
    let next = null;
    if (key === "ArrowRight" || (onHighlight && key === "ArrowDown")) {
      next = onHighlight ? list[Math.min(list.length - 1, current + 1)] : list[0];
    } else if (key === "ArrowLeft" || (onHighlight && key === "ArrowUp")) {
      next = onHighlight ? list[Math.max(0, current - 1)] : list[list.length - 1];
    } else if (onHighlight && key === "Home") {
      next = list[0];
    } else if (onHighlight && key === "End") {
      next = list[list.length - 1];
    } else if (onHighlight && (key === "Enter" || key === " ")) {
      event.preventDefault();
      selectFromHighlight(event.target, { focus: true });
      return;
    } else if (onHighlight && key === "Escape") {
      event.preventDefault();
      el.noteView.focus();
      return;
    } else {
      return;
    }
    if (next) {
      event.preventDefault();
      next.focus();
    }
  }

  /* ------------------------------------------------------------ add a code (combobox) */

  const search = { options: [], active: -1, seq: 0, timer: null };

  function closeOptions() {
    el.codeOptions.hidden = true;
    el.codeOptions.textContent = "";
    el.codeSearch.setAttribute("aria-expanded", "false");
    el.codeSearch.removeAttribute("aria-activedescendant");
    search.options = [];
    search.active = -1;
  }

  function renderOptions() {
    el.codeOptions.textContent = "";
    search.options.forEach((code, i) => {
      const li = document.createElement("li");
      li.id = `code-option-${i}`;
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", i === search.active ? "true" : "false");
      li.dataset.index = String(i);
      const id = document.createElement("span");
      id.className = "code-id";
      id.textContent = code.code;
      li.append(id, ` ${code.description || ""}`);
      if (findItem(code.code)) {
        const mark = document.createElement("span");
        mark.className = "meta-note";
        mark.textContent = " · already in the list";
        li.append(mark);
      }
      el.codeOptions.append(li);
    });
    const open = search.options.length > 0;
    el.codeOptions.hidden = !open;
    el.codeSearch.setAttribute("aria-expanded", open ? "true" : "false");
    if (search.active >= 0) {
      el.codeSearch.setAttribute("aria-activedescendant", `code-option-${search.active}`);
      const active = $(`code-option-${search.active}`);
      if (active) active.scrollIntoView({ block: "nearest" });
    } else {
      el.codeSearch.removeAttribute("aria-activedescendant");
    }
  }

  async function runSearch() {
    const query = el.codeSearch.value.trim().slice(0, 200);  // the server's limit
    const seq = ++search.seq;
    if (!query) {
      closeOptions();
      return;
    }
    try {
      const data = await api(`v1/codes?q=${encodeURIComponent(query)}&limit=20`, { timeoutMs: 30000 });
      if (seq !== search.seq) return;
      search.options = data && Array.isArray(data.codes) ? data.codes.filter((c) => c && c.code) : [];
      search.active = -1;
      renderOptions();
      announce(search.options.length
        ? `${search.options.length} matching code${search.options.length === 1 ? "" : "s"}; use the Down arrow to choose.`
        : "No code of this model matches.");
    } catch (err) {
      if (seq !== search.seq) return;
      closeOptions();
      showError(err instanceof ApiError ? describeError(err) : "The code search failed.");
    }
  }

  function chooseOption(index) {
    const code = search.options[index];
    if (!code || !review) return;
    const existing = findItem(code.code);
    el.codeSearch.value = "";
    closeOptions();
    if (existing) {
      if (existing.source === "model" && existing.decision !== "accepted") {
        existing.decision = "accepted";
        updateRow(existing);
        updateSummary();
        announce(`${code.code} was already suggested; it is now accepted.`);
      } else {
        announce(`${code.code} is already in the list (${existing.decision}).`);
      }
      return;
    }
    const item = {
      code: String(code.code),
      system: code.system ? String(code.system) : "icd10cm",
      description: code.description ? String(code.description) : "",
      probability: null,
      score: null,
      evidence: [],
      decision: "added",
      source: "coder",
    };
    review.items.push(item);
    el.codeList.append(codeRow(item));
    updateSummary();
    renderNote();
    announce(`${item.code} added.`);
  }

  function onSearchKey(event) {
    const n = search.options.length;
    switch (event.key) {
      case "ArrowDown":
        if (n) {
          event.preventDefault();
          search.active = (search.active + 1) % n;
          renderOptions();
        }
        break;
      case "ArrowUp":
        if (n) {
          event.preventDefault();
          search.active = search.active <= 0 ? n - 1 : search.active - 1;
          renderOptions();
        }
        break;
      case "Enter":
        if (n && search.active >= 0) {
          event.preventDefault();
          chooseOption(search.active);
        } else if (n === 1) {
          event.preventDefault();
          chooseOption(0);
        }
        break;
      case "Escape":
        if (!el.codeOptions.hidden) {
          event.preventDefault();
          search.seq += 1;
          closeOptions();
        } else if (el.codeSearch.value) {
          event.preventDefault();
          el.codeSearch.value = "";
        }
        break;
      case "Tab":
        search.seq += 1;
        closeOptions();
        break;
      default:
        break;
    }
  }

  /* ------------------------------------------------------------ export */

  // The JSON export carries the decisions with their evidence (offsets, scores and the passage
  // texts, which a coder's system needs to show why a code was chosen), but not the whole note:
  // the coder's system already holds the note, and `text_sha256` (SHA-256 of the note's UTF-8
  // bytes, exactly as coded) lets it check that the offsets refer to that very text.

  const decided = () => review.items.filter((item) => item.decision !== "undecided");
  const exportSpans = (item) => item.evidence.map((s) => ({ start: s.start, end: s.end, score: s.score, text: s.text }));

  function fileStem() {
    const stem = review.noteId.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "").slice(0, 80);
    return stem || "note";
  }

  function download(name, type, content) {
    const blob = new Blob([content], { type });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  function undecidedWarning() {
    const open = review.items.filter((item) => item.decision === "undecided").length;
    return open ? ` ${open} undecided code${open === 1 ? " is" : "s are"} not among the decisions.` : "";
  }

  async function exportJson() {
    if (!review) return;
    const document_ = {
      format: "clem-icd-review",
      format_version: 1,
      exported_at: new Date().toISOString(),
      note_id: review.noteId,
      model: review.model,
      explain: review.explain,
      text_sha256: await sha256Hex(review.text),
      text_length: review.table.length - 1,
      truncated: review.truncated,
      decisions: decided().map((item) => ({
        code: item.code,
        system: item.system,
        description: item.description,
        probability: item.probability,
        score: item.score,
        decision: item.decision,
        evidence: exportSpans(item),
      })),
      undecided: review.items.filter((item) => item.decision === "undecided").map((item) => ({
        code: item.code, system: item.system, description: item.description, probability: item.probability,
        score: item.score,
      })),
    };
    download(`${fileStem()}-review.json`, "application/json", `${JSON.stringify(document_, null, 2)}\n`);
    announce(`Exported ${document_.decisions.length} decision${document_.decisions.length === 1 ? "" : "s"} as JSON.${undecidedWarning()}`);
  }

  function noteReference() {
    return { identifier: { system: NOTE_SYSTEM, value: review.noteId }, display: `note ${review.noteId}` };
  }

  function evidenceExtension(span) {
    const parts = [
      { url: "start", valueInteger: span.start },
      { url: "end", valueInteger: span.end },
    ];
    if (span.score !== null) parts.push({ url: "score", valueDecimal: span.score });
    parts.push({ url: "text", valueString: span.text });
    return { url: EVIDENCE_URL, extension: parts };
  }

  function fhirResource(item) {
    const coding = { system: SYSTEM_URIS[item.system] || `urn:clem-icd:code-system:${item.system}`, code: item.code };
    if (item.description) coding.display = item.description;
    const extension = [{ url: DECISION_URL, valueCode: item.decision }];
    // As the server's FHIR output: a probability where there is one, else the rank score, named so.
    if (item.probability !== null) extension.push({ url: PROBABILITY_URL, valueDecimal: Math.round(item.probability * 1e6) / 1e6 });
    else if (item.score !== null) extension.push({ url: RANK_SCORE_URL, valueDecimal: Math.round(item.score * 1e6) / 1e6 });
    const spans = exportSpans(item);
    if (PROCEDURE_SYSTEMS.has(item.system)) {
      return {
        resourceType: "Procedure",
        extension: [...extension, ...spans.map(evidenceExtension)],
        status: item.decision === "rejected" ? "unknown" : "completed",
        code: { coding: [coding] },
        subject: noteReference(),
      };
    }
    const resource = {
      resourceType: "Condition",
      extension,
      verificationStatus: { coding: [{ system: VERIFICATION_SYSTEM, code: item.decision === "rejected" ? "refuted" : "confirmed" }] },
      code: { coding: [coding] },
      subject: noteReference(),
    };
    if (spans.length) {
      resource.evidence = spans.map((span) => ({ extension: [evidenceExtension(span)], detail: [noteReference()] }));
    }
    return resource;
  }

  function exportFhir() {
    if (!review) return;
    const version = review.model.version || (model && model.version) || "unknown";
    const bundle = {
      resourceType: "Bundle",
      type: "collection",
      timestamp: new Date().toISOString(),
      meta: { tag: [{ system: "urn:clem-icd:generator", code: `clem-icd-${version}` }] },
      entry: decided().map((item) => ({ fullUrl: `urn:uuid:${uuid()}`, resource: fhirResource(item) })),
    };
    download(`${fileStem()}-review.fhir.json`, "application/fhir+json", `${JSON.stringify(bundle, null, 2)}\n`);
    announce(`Exported ${bundle.entry.length} decision${bundle.entry.length === 1 ? "" : "s"} as a FHIR Bundle.${undecidedWarning()}`);
  }

  function uuid() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    const b = window.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  /** SHA-256 (hex) of the UTF-8 bytes of `text`; WebCrypto where the page is a secure context. */
  async function sha256Hex(text) {
    const bytes = new TextEncoder().encode(text);
    if (window.crypto && window.crypto.subtle) {
      try {
        const digest = await window.crypto.subtle.digest("SHA-256", bytes);
        return Array.from(new Uint8Array(digest), (x) => x.toString(16).padStart(2, "0")).join("");
      } catch (error) {
        /* fall through to the script version */
      }
    }
    return sha256Fallback(bytes);
  }

  // FIPS 180-4 SHA-256, for pages served over plain HTTP to another host (no WebCrypto there).
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);

  function sha256Fallback(bytes) {
    const bitLength = bytes.length * 8;
    const padded = new Uint8Array(Math.ceil((bytes.length + 9) / 64) * 64);
    padded.set(bytes);
    padded[bytes.length] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(bitLength / 0x100000000));
    view.setUint32(padded.length - 4, bitLength >>> 0);
    const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    const w = new Uint32Array(64);
    const rotr = (x, n) => (x >>> n) | (x << (32 - n));
    for (let offset = 0; offset < padded.length; offset += 64) {
      for (let i = 0; i < 16; i += 1) w[i] = view.getUint32(offset + i * 4);
      for (let i = 16; i < 64; i += 1) {
        const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
        const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
      }
      let [a, b, c, d, e, f, g, hh] = h;
      for (let i = 0; i < 64; i += 1) {
        const S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        const ch = (e & f) ^ (~e & g);
        const t1 = (hh + S1 + ch + K[i] + w[i]) >>> 0;
        const S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        const maj = (a & b) ^ (a & c) ^ (b & c);
        const t2 = (S0 + maj) >>> 0;
        hh = g; g = f; f = e; e = (d + t1) >>> 0;
        d = c; c = b; b = a; a = (t1 + t2) >>> 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }
    return Array.from(h, (x) => x.toString(16).padStart(8, "0")).join("");
  }

  /* ------------------------------------------------------------ wiring */

  function init() {
    Object.assign(el, {
      modelInfo: $("model-info"), token: $("token"), tokenError: $("token-error"), remember: $("remember-token"), explain: $("explain"),
      threshold: $("threshold"), thresholdLabel: $("threshold-label"), topK: $("top-k"), form: $("note-form"), noteId: $("note-id"),
      noteFile: $("note-file"), noteText: $("note-text"), noteStats: $("note-stats"), codeButton: $("code-button"),
      clearButton: $("clear-button"), status: $("status"), error: $("error"), review: $("review"),
      warnings: $("warnings"), noteView: $("note-view"), showAll: $("show-all"), codeList: $("code-list"),
      codesSummary: $("codes-summary"), evidencePanel: $("evidence-panel"), evidenceHeading: $("evidence-heading"),
      evidenceList: $("evidence-list"), evidenceEmpty: $("evidence-empty"), codeSearch: $("code-search"),
      codeOptions: $("code-options"), exportJson: $("export-json"), exportFhir: $("export-fhir"),
    });

    restoreToken();
    el.token.addEventListener("change", () => {
      storeToken();
      loadModelInfo();
    });
    el.remember.addEventListener("change", storeToken);
    $("connection-form").addEventListener("submit", (event) => {
      event.preventDefault();  // Enter in a field: (re)connect with the token
      storeToken();
      loadModelInfo();
    });

    el.form.addEventListener("submit", codeNote);
    el.noteText.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        codeNote();
      }
    });
    el.noteText.addEventListener("input", () => {
      syncFromTextarea();
      noteChanged();
    });
    el.noteText.addEventListener("paste", (event) => {
      const data = event.clipboardData ? event.clipboardData.getData("text/plain") : "";
      if (!data) return;
      event.preventDefault();
      insertRaw(data);
    });
    el.noteText.addEventListener("dragover", (event) => {
      if (hasFiles(event)) {
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
        el.noteText.classList.add("dragging");
      }
    });
    el.noteText.addEventListener("dragleave", () => el.noteText.classList.remove("dragging"));
    el.noteText.addEventListener("drop", (event) => {
      el.noteText.classList.remove("dragging");
      if (!hasFiles(event)) return;  // dropped text: the input event keeps note.raw in step
      event.preventDefault();
      loadFile(event.dataTransfer.files[0]);
    });
    el.noteFile.addEventListener("change", () => {
      loadFile(el.noteFile.files[0]);
    });
    el.clearButton.addEventListener("click", () => {
      setNote("");
      el.noteFile.value = "";
      clearError();
      announce("The note was cleared.");
      el.noteText.focus();
    });

    el.codeList.addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button || !review) return;
      const item = findItem(button.dataset.code || button.closest(".code-row").dataset.code);
      if (!item) return;
      if (button.classList.contains("code-select")) selectCode(item.code);
      else if (button.dataset.action === "remove") removeAdded(item);
      else if (button.dataset.action) decide(item, button.dataset.action);
    });
    el.codeList.addEventListener("keydown", (event) => {
      const target = event.target;
      if (!target.classList || !["ArrowDown", "ArrowUp", "ArrowLeft", "ArrowRight"].includes(event.key)) return;
      if (target.classList.contains("code-select") && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
        const selects = Array.from(el.codeList.querySelectorAll(".code-select"));
        const i = selects.indexOf(target) + (event.key === "ArrowDown" ? 1 : -1);
        if (i >= 0 && i < selects.length) {
          event.preventDefault();
          selects[i].focus();
        }
      } else if (target.closest(".decision") && (event.key === "ArrowLeft" || event.key === "ArrowRight")) {
        const buttons = Array.from(target.closest(".decision").querySelectorAll("button"));
        const i = buttons.indexOf(target) + (event.key === "ArrowRight" ? 1 : -1);
        if (i >= 0 && i < buttons.length) {
          event.preventDefault();
          buttons[i].focus();
        }
      }
    });

    el.noteView.addEventListener("click", (event) => {
      const node = event.target.closest("mark, .ev-other");
      if (node && review) selectFromHighlight(node, { focus: true });
    });
    el.noteView.addEventListener("keydown", onNoteViewKey);
    el.showAll.addEventListener("change", () => {
      if (review) renderNote();
    });

    el.evidenceList.addEventListener("click", (event) => {
      const button = event.target.closest("button.evidence-link");
      if (!button) return;
      const mark = el.noteView.querySelectorAll("mark")[Number(button.dataset.mark)];
      if (!mark) return;
      scrollToMark(mark);
      mark.focus({ preventScroll: true });
    });

    el.codeSearch.addEventListener("input", () => {
      clearTimeout(search.timer);
      search.timer = setTimeout(runSearch, 150);
    });
    el.codeSearch.addEventListener("keydown", onSearchKey);
    el.codeSearch.addEventListener("blur", () => {
      setTimeout(() => {
        if (document.activeElement !== el.codeSearch) closeOptions();
      }, 0);
    });
    el.codeOptions.addEventListener("mousedown", (event) => event.preventDefault());  // keep focus in the box
    el.codeOptions.addEventListener("click", (event) => {
      const option = event.target.closest("[role='option']");
      if (option) chooseOption(Number(option.dataset.index));
    });

    el.exportJson.addEventListener("click", exportJson);
    el.exportFhir.addEventListener("click", exportFhir);

    loadModelInfo();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
