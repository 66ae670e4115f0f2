/* The note being written: the textarea and the raw string that is sent.
 *
 * A <textarea> turns CRLF and CR into LF in its value. The page therefore keeps the note's raw
 * string (`note.raw`) beside it: a loaded or dropped .txt file and pasted text are kept as they
 * are (CRLF included), and typing is applied to the raw string as an edit of the changed stretch
 * only, so the untouched parts keep their line endings. What is sent is `note.raw`.
 *
 * Privacy: the note is never logged, stored or put in a message.
 */

import { announce, clearError, el, showError } from "./dom.js";
import { formatNumber } from "./format.js";
import { maxChars } from "./model.js";
import { countCodePoints, lineEndings, normalizeNewlines, rawIndex, spliceRaw } from "./offsets.js";

const MAX_FILE_BYTES = 20 * 1024 * 1024;

const note = { raw: "", shown: "", pendingPaste: null };
const listeners = [];

/** `listener()` runs after each change of the note. */
export function onNoteChange(listener) {
  listeners.push(listener);
}

/** The raw note, in step with the textarea. */
export function noteText() {
  syncFromTextarea();
  return note.raw;
}

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
  for (const listener of listeners) listener();
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

/** The size and line endings of the note, beside the limit of the server's model. */
export function updateNoteStats() {
  if (!note.raw) {
    el.noteStats.textContent = "";
    return;
  }
  const n = countCodePoints(note.raw);
  const endings = lineEndings(note.raw);
  const limit = maxChars() ? ` of at most ${formatNumber(maxChars())}` : "";
  const endingText = endings === "none" ? "" : `, ${endings} line endings`;
  el.noteStats.textContent = `Now ${formatNumber(n)} characters${limit}${endingText}.`;
}

/* ------------------------------------------------------------ files */

async function readTextFile(file) {
  if (file.size > MAX_FILE_BYTES) {
    throw new Error(`The file is larger than ${MAX_FILE_BYTES / 1024 / 1024} MB; load a plain-text note.`);
  }
  const bytes = await file.arrayBuffer();
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);  // drops a leading BOM
  } catch (error) {
    throw new Error("The file is not UTF-8 text; save it as UTF-8 plain text and load it again.");
  }
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
    text = await readTextFile(file);
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

/* ------------------------------------------------------------ wiring */

/** Typing, pasting, dropping and loading a note, and clearing it. */
export function wireNoteInput() {
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
}
