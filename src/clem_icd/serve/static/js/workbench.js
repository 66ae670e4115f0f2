/* The workbench (a server started with --db): a note from the worklist in the review view, its
 * saved decision restored, saved back with the ETag it was read with, submitted for audit, and
 * its history.
 *
 * Nothing is ever overwritten unseen: every write sends If-Match with the ETag this page read.
 * When another coder (or another tab) changed the note since, the server answers 412 and the
 * page says so and offers to reload the current version; it never retries on its own.
 *
 * Privacy: messages name notes by id; the text is shown in the review only.
 */

import { ApiError, api, apiResponse, describeError } from "./api.js";
import { announce, byId, clearError, showError } from "./dom.js";
import { applyDecision, currentReview, decisionBody, onDecisionChange, startReview } from "./review.js";
import { focusWorklist, loadWorklist, noteUrl, probeWorkbench, showWorklist, wireWorklist } from "./worklist.js";

const w = {
  panel: byId("work-note"),
  heading: byId("work-note-heading"),
  info: byId("work-note-info"),
  conflict: byId("work-conflict"),
  conflictText: byId("work-conflict-text"),
  reload: byId("work-reload"),
  save: byId("work-save"),
  submit: byId("work-submit"),
  release: byId("work-release"),
  back: byId("work-back"),
  history: byId("history-list"),
  notePanel: byId("note-panel"),
};

// The note open in the review: {id, etag, status, assignee, version, meta, decision, review, dirty}.
let current = null;
let openSeq = 0;
let busy = false;
let enabled = false;
let discardArmed = null;  // the id whose open was refused once for unsaved changes

/** The suggestions as the review reads /v1/code's codes: one row per code (the first model's
 *  when several suggested it). */
function asResult(note) {
  const seen = new Set();
  const codes = [];
  for (const s of Array.isArray(note.suggestions) ? note.suggestions : []) {
    if (seen.has(s.code)) continue;
    seen.add(s.code);
    codes.push(s);
  }
  return { codes, truncated: false };
}

function modelOf(note) {
  const first = Array.isArray(note.suggestions) ? note.suggestions[0] : undefined;
  return first ? { name: first.model_name, version: first.model_version } : {};
}

function showInfo() {
  if (!current) return;
  const parts = [`Status: ${current.status}`, current.assignee ? `assigned to ${current.assignee}` : "unassigned",
    `version ${current.version}`];
  if (current.meta && current.meta.encounter_date !== undefined) parts.push(`encounter ${current.meta.encounter_date}`);
  const d = current.decision;
  parts.push(d ? `last saved by ${d.by} at ${String(d.at).replace("T", " ")}` : "no decision saved yet");
  if (current.dirty) parts.push("unsaved changes");
  w.info.textContent = `${parts.join(" · ")}.`;
  w.heading.textContent = `Note ${current.id}`;
}

function hideConflict() {
  w.conflict.hidden = true;
  w.conflictText.textContent = "";
}

function showConflict(message) {
  w.conflict.hidden = false;
  w.conflictText.textContent = message;
  w.reload.focus();
}

/** The history panel: who did what, when (never text). */
async function loadHistory(id) {
  let data;
  try {
    data = await api(noteUrl(id, "/history"));
  } catch (err) {
    return;  // the note itself is shown; a missing history is no reason to hide it
  }
  if (!current || current.id !== id) return;
  w.history.textContent = "";
  for (const line of Array.isArray(data.history) ? data.history : []) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.dateTime = line.at || "";
    time.textContent = line.at ? line.at.replace("T", " ") : "—";
    const detail = line.detail || {};
    const counts = ["accepted", "rejected", "added"].filter((k) => Array.isArray(detail[k]) && detail[k].length)
      .map((k) => `${k} ${detail[k].join(", ")}`);
    const extra = [detail.outcome, ...counts].filter(Boolean).join("; ");
    li.append(time, ` · ${line.user || "the service"} · ${line.action}${extra ? ` (${extra})` : ""}`);
    w.history.append(li);
  }
}

/** Reads the note (its ETag too) and shows it in the review with its saved decision. */
async function openNote(id, { focus = true } = {}) {
  if (current && current.dirty && current.id !== id && discardArmed !== id) {
    discardArmed = id;
    showError(`Note ${current.id} has unsaved changes. Save them, or open note ${id} again to discard them.`);
    return;
  }
  discardArmed = null;
  const seq = ++openSeq;
  clearError();
  announce(`Opening note ${id}…`);
  let got;
  try {
    got = await apiResponse(noteUrl(id));
  } catch (err) {
    if (seq !== openSeq) return;
    announce("");
    showError(err instanceof ApiError ? describeError(err) : `Note ${id} could not be read.`);
    return;
  }
  if (seq !== openSeq) return;  // another note was asked for meanwhile
  const note = got.body;
  if (typeof note.text !== "string") {
    announce("");
    showError(`The text of note ${id} was deleted after export (retention): it can no longer be reviewed.`);
    return;
  }
  hideConflict();
  startReview(note.text, note.id, modelOf(note), asResult(note), "attention", { fromEditor: false });
  applyDecision(note.decision);
  current = {
    id: note.id, etag: got.headers.get("ETag"), status: note.status, assignee: note.assignee,
    version: note.version, meta: note.meta, decision: note.decision, review: currentReview(), dirty: false,
  };
  w.panel.hidden = false;
  w.history.textContent = "";
  showInfo();
  announce(`Note ${note.id} opened (${note.status})`
    + `${note.decision ? `, with the decision ${note.decision.by} saved` : ""}. Select a code to see its evidence.`);
  if (focus) w.heading.focus();
  loadHistory(note.id);
  loadWorklist({ quiet: true });  // the table shows the state just read, not an older one
}

/** The note's state after a write ({id, version, status}), with the new ETag. */
function written(got) {
  current.etag = got.headers.get("ETag");
  current.version = got.body.version;
  current.status = got.body.status;
}

function writeFailed(err, what) {
  if (err instanceof ApiError && err.status === 412) {
    showConflict(`Not ${what}: another coder, or this note in another tab, changed note ${current.id} after `
      + "you opened it. Nothing was overwritten. Reload the note to see its current version, then decide again.");
  } else if (err instanceof ApiError && err.status === 409) {
    showError(`Note ${current.id} was not ${what} (409): ${err.detail}.`);
  } else {
    showError(err instanceof ApiError ? describeError(err) : `Note ${current.id} was not ${what}.`);
  }
}

/** The review still shows the workbench note (coding a pasted note replaces it). */
function reviewing() {
  if (!current) return false;
  if (currentReview() !== current.review) {
    showError(`The review no longer shows note ${current.id}; open it again from the worklist.`);
    return false;
  }
  return true;
}

function body() {
  const decision = decisionBody();
  const kept = current.decision || {};
  const final = new Set([...decision.accepted, ...decision.added.map((a) => a.code)]);
  // The page has no principal-code control: a saved one stays while it is still a final code.
  return { ...decision, principal_code: final.has(kept.principal_code) ? kept.principal_code : null,
           reason: kept.reason || null };
}

async function save() {
  if (busy || !reviewing()) return false;
  busy = true;
  clearError();
  hideConflict();
  announce(`Saving note ${current.id}…`);
  const id = current.id;
  const decision = body();
  try {
    const got = await apiResponse(noteUrl(id, "/decision"), {
      method: "PUT",
      headers: { "Content-Type": "application/json", "If-Match": current.etag },
      body: JSON.stringify(decision),
    });
    written(got);
    current.dirty = false;
    const fresh = await api(noteUrl(id));  // who and when, as the server recorded them
    if (current && current.id === id) {
      current.decision = fresh.decision;
      current.assignee = fresh.assignee;
    }
    showInfo();
    announce(`Note ${id} saved: ${decision.accepted.length} accepted, ${decision.rejected.length} rejected, `
      + `${decision.added.length} added.`);
    loadHistory(id);
    loadWorklist({ quiet: true });
    return true;
  } catch (err) {
    announce("");
    writeFailed(err, "saved");
    return false;
  } finally {
    busy = false;
  }
}

async function submit() {
  if (busy || !reviewing()) return;
  if ((current.dirty || !current.decision) && !(await save())) return;
  busy = true;
  const id = current.id;
  try {
    written(await apiResponse(noteUrl(id, "/submit"), { method: "POST", headers: { "If-Match": current.etag } }));
    showInfo();
    announce(`Note ${id} submitted for audit.`);
    loadHistory(id);
    loadWorklist({ quiet: true });
  } catch (err) {
    announce("");
    writeFailed(err, "submitted");
  } finally {
    busy = false;
  }
}

async function release() {
  if (busy || !current) return;
  busy = true;
  clearError();
  const id = current.id;
  try {
    written(await apiResponse(noteUrl(id, "/release"), { method: "POST" }));
    current.assignee = null;
    showInfo();
    announce(`Note ${id} released to the worklist.`);
    loadHistory(id);
    loadWorklist({ quiet: true });
  } catch (err) {
    announce("");
    writeFailed(err, "released");
  } finally {
    busy = false;
  }
}

/** Detects the workbench (after each (re)connection) and shows or hides its views. */
export async function connectWorkbench() {
  const found = await probeWorkbench();
  enabled = found;
  showWorklist(found);
  // A workbench note is read from the server: the editor for pasted notes would only compete.
  w.notePanel.hidden = found;
  if (!found) {
    w.panel.hidden = true;
    return;
  }
  await loadWorklist({ cursor: null, page: 1, quiet: true });
}

export function wireWorkbench() {
  wireWorklist((id) => openNote(id));
  onDecisionChange(() => {
    if (current && currentReview() === current.review && !current.dirty) {
      current.dirty = true;
      showInfo();
    }
  });
  w.save.addEventListener("click", save);
  w.submit.addEventListener("click", submit);
  w.release.addEventListener("click", release);
  w.reload.addEventListener("click", () => {
    if (!current) return;
    current.dirty = false;  // the coder chose the server's version over the unsaved one
    openNote(current.id);
  });
  w.back.addEventListener("click", () => {
    loadWorklist({ quiet: true });
    focusWorklist();
  });
  document.addEventListener("keydown", (event) => {
    if (enabled && current && (event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") {
      event.preventDefault();  // the browser's "save page" would only save the HTML
      save();
    }
  });
  window.addEventListener("beforeunload", (event) => {
    if (current && current.dirty) event.preventDefault();
  });
}
