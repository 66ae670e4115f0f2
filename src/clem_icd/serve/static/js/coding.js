/* Coding the note: the options, POST /v1/code, and the review that follows. Only the latest
 * request counts: the answer to an earlier one (the coder pressed again) is dropped.
 */

import { ApiError, describeError, postJson } from "./api.js";
import { announce, clearError, el, showError } from "./dom.js";
import { formatNumber } from "./format.js";
import { maxChars, scoreName } from "./model.js";
import { noteText } from "./note.js";
import { countCodePoints } from "./offsets.js";
import { startReview } from "./review.js";

let busy = false;
let requestSeq = 0;

/** The threshold and top-k fields ({threshold, topK}, null when empty); throws with the message. */
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
  const wholeNumber = "The number of codes must be a whole number of at least 1.";
  if (el.topK.validity.badInput) throw new Error(wholeNumber);
  if (el.topK.value.trim() !== "") {
    topK = Number(el.topK.value);
    if (!Number.isInteger(topK) || topK < 1) throw new Error(wholeNumber);
  }
  return { threshold, topK };
}

// aria-disabled rather than disabled: the button keeps its focus and stays announced.
function setBusy(value) {
  busy = value;
  el.codeButton.setAttribute("aria-disabled", value ? "true" : "false");
  el.codeButton.textContent = value ? "Coding…" : "Code the note";
  el.review.setAttribute("aria-busy", value ? "true" : "false");
}

async function codeNote(event) {
  if (event) event.preventDefault();
  if (busy) return;
  clearError();
  const text = noteText();
  if (!text.trim()) {
    showError("The note is empty: paste, type or load a note first.");
    el.noteText.focus();
    return;
  }
  const limit = maxChars();
  if (limit && countCodePoints(text) > limit) {
    showError(`The note is too large for this server: it has ${formatNumber(countCodePoints(text))} characters `
      + `and the server accepts at most ${formatNumber(limit)}. Shorten the note or split it.`);
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
    const data = await postJson("v1/code", body);
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
    showError(err instanceof ApiError ? describeError(err, maxChars()) : "Something went wrong while coding the note.");
  } finally {
    if (seq === requestSeq) setBusy(false);
  }
}

/** The form's submit (the button) and Ctrl+Enter (or Cmd+Enter) in the text box. */
export function wireCoding() {
  el.form.addEventListener("submit", codeNote);
  el.noteText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      codeNote();
    }
  });
}
