/* The workbench's worklist (GET /v1/work/notes): a table of notes in queue order, filtered by
 * status and by "assigned to me", a page at a time (the server's keyset cursor), and "next
 * note", which claims the first pre-coded note.
 *
 * The table shows ids, states, names and metadata, never note text.
 */

import { ApiError, api, describeError } from "./api.js";
import { announce, byId, showError } from "./dom.js";

const w = {
  panel: byId("worklist"),
  heading: byId("worklist-heading"),
  filters: byId("worklist-filters"),
  status: byId("worklist-status"),
  mine: byId("worklist-mine"),
  next: byId("next-note"),
  refresh: byId("worklist-refresh"),
  rows: byId("worklist-rows"),
  caption: byId("worklist-caption"),
  empty: byId("worklist-empty"),
  first: byId("worklist-first"),
  more: byId("worklist-more"),
};

// `cursor` is the cursor of the page shown (null: the first), `next` the server's for the one after.
const list = { cursor: null, next: null, page: 1, seq: 0, open: null };

export const noteUrl = (id, tail = "") => `v1/work/notes/${encodeURIComponent(id)}${tail}`;

/** Whether the server has a workbench: 200 with the token, 404 without one (the page then stays
 *  the stateless review page). A refused token counts as a workbench: the token is the
 *  problem, and the token field already says so. */
export async function probeWorkbench() {
  try {
    await api("v1/work/notes?limit=1", { timeoutMs: 30000 });
    return true;
  } catch (err) {
    return err instanceof ApiError && (err.status === 401 || err.status === 403);
  }
}

export function showWorklist(visible) {
  w.panel.hidden = !visible;
}

export const focusWorklist = () => w.heading.focus();

function query(cursor, extra = {}) {
  const params = new URLSearchParams();
  if (w.status.value) params.set("status", w.status.value);
  if (w.mine.checked) params.set("assignee", "me");
  params.set("limit", "50");
  if (cursor) params.set("cursor", cursor);
  for (const [key, value] of Object.entries(extra)) params.set(key, value);
  return `v1/work/notes?${params}`;
}

const shortTime = (iso) => (iso ? iso.replace("T", " ").replace(/(\+00:00|Z)$/, " UTC") : "—");

/** The metadata other than the encounter date, as "key: value" pairs. */
function details(meta) {
  return Object.entries(meta || {})
    .filter(([key]) => key !== "encounter_date")
    .map(([key, value]) => `${key}: ${typeof value === "object" ? JSON.stringify(value) : String(value)}`)
    .join("; ");
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function row(note) {
  const tr = document.createElement("tr");
  tr.dataset.id = note.id;
  tr.dataset.status = note.status;
  const first = document.createElement("th");
  first.scope = "row";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "worklist-open";
  open.dataset.id = note.id;
  open.textContent = note.id;
  open.setAttribute("aria-label", `Open note ${note.id}`);
  first.append(open);
  const status = cell(note.status);
  status.className = `state state-${note.status.replace(/\s+/g, "-")}`;
  const meta = note.meta || {};
  tr.append(first, status, cell(note.assignee || "—"),
            cell(meta.encounter_date !== undefined ? String(meta.encounter_date) : "—"),
            cell(details(meta) || "—"), cell(shortTime(note.updated_at)));
  return tr;
}

/** Shows the page at `cursor` (null: the first page); `quiet` keeps the status line as it is. */
export async function loadWorklist({ cursor = list.cursor, page = list.page, quiet = false } = {}) {
  const seq = ++list.seq;
  let data;
  try {
    data = await api(query(cursor));
  } catch (err) {
    if (seq === list.seq) showError(err instanceof ApiError ? describeError(err) : "The worklist could not be read.");
    return;
  }
  if (seq !== list.seq) return;  // the filters changed meanwhile: a newer request is on its way
  const notes = Array.isArray(data.notes) ? data.notes : [];
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.id : undefined;
  w.rows.textContent = "";
  for (const note of notes) w.rows.append(row(note));
  list.cursor = cursor;
  list.page = page;
  list.next = data.next_cursor || null;
  w.empty.hidden = notes.length > 0;
  w.more.hidden = !list.next;
  w.first.hidden = page === 1;
  w.caption.textContent = `Notes in queue order, page ${page}${list.next ? "" : " (the last)"}`;
  if (focused !== undefined) {  // a refresh keeps the coder's place in the table
    const again = w.rows.querySelector(`button[data-id="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
  if (!quiet) announce(`Worklist page ${page}: ${notes.length} note${notes.length === 1 ? "" : "s"}.`);
}

/** The first pre-coded note, claimed: its id, or null when none is waiting. Another coder may
 *  claim the same note first; then the next one is tried. */
async function claimNext() {
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const data = await api("v1/work/notes?status=pre-coded&limit=1");
    const note = Array.isArray(data.notes) ? data.notes[0] : undefined;
    if (!note) return null;
    try {
      await api(noteUrl(note.id, "/claim"), { method: "POST" });
      return note.id;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 409) throw err;
    }
  }
  throw new ApiError(409, "other coders claimed each pre-coded note first; try again");
}

async function nextNote() {
  announce("Looking for the next pre-coded note…");
  let id;
  try {
    id = await claimNext();
  } catch (err) {
    announce("");
    showError(err instanceof ApiError ? describeError(err) : "The next note could not be claimed.");
    return;
  }
  if (id === null) {
    announce("No pre-coded note is waiting.");
    return;
  }
  await list.open(id);
  loadWorklist({ quiet: true });
}

/** Up and Down (Home, End) move between the notes' buttons. */
function onRowsKey(event) {
  if (!["ArrowDown", "ArrowUp", "Home", "End"].includes(event.key)) return;
  const buttons = Array.from(w.rows.querySelectorAll(".worklist-open"));
  const i = buttons.indexOf(event.target);
  if (i < 0) return;
  const j = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: buttons.length - 1 }[event.key];
  if (j >= 0 && j < buttons.length) {
    event.preventDefault();
    buttons[j].focus();
  }
}

/** `open(id)` opens a note in the review (workbench.js). */
export function wireWorklist(open) {
  list.open = open;
  w.filters.addEventListener("submit", (event) => event.preventDefault());
  w.status.addEventListener("change", () => loadWorklist({ cursor: null, page: 1 }));
  w.mine.addEventListener("change", () => loadWorklist({ cursor: null, page: 1 }));
  w.refresh.addEventListener("click", () => loadWorklist());
  w.next.addEventListener("click", nextNote);
  w.more.addEventListener("click", () => {
    if (list.next) loadWorklist({ cursor: list.next, page: list.page + 1 });
  });
  w.first.addEventListener("click", () => loadWorklist({ cursor: null, page: 1 }));
  w.rows.addEventListener("keydown", onRowsKey);
  w.rows.addEventListener("click", (event) => {
    const button = event.target.closest(".worklist-open");
    if (button) open(button.dataset.id);
  });
}
