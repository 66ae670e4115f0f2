/* The note under review: its codes and the coder's decisions (accept, reject, add, remove), the
 * selected code, the warnings, and the keyboard in the code list and in the coded text.
 *
 * `review` holds the very string that was coded (`text`), its code point -> UTF-16 table, and
 * one item per code: {code, system, description, probability, score, evidence (with UTF-16
 * offsets), decision: undecided | accepted | rejected | added, source: model | coder, row}.
 * Scores: `score` always (what the threshold compared), `probability` only when the model's
 * scores are probabilities; both null for a code the coder added.
 */

import { announce, el } from "./dom.js";
import { codeRow, renderCodeList, rowOf, updateRow, updateSummary } from "./codes.js";
import { formatNumber } from "./format.js";
import { highlights, marks, renderEvidencePanel, renderNote, scrollToMark } from "./highlight.js";
import { currentModel } from "./model.js";
import { noteText } from "./note.js";
import { codePointTable, convertEvidence } from "./offsets.js";

let review = null;
const decisionListeners = [];

/** `listener()` runs after each decision the coder makes (accept, reject, add, remove). */
export function onDecisionChange(listener) {
  decisionListeners.push(listener);
}

function decisionChanged() {
  for (const listener of decisionListeners) listener();
}

/** The review, or null before the first note is coded. */
export const currentReview = () => review;

export const findItem = (code) => (review ? review.items.find((item) => item.code === code) : undefined);

/** The items with a decision, in list order. */
export const decidedItems = () => review.items.filter((item) => item.decision !== "undecided");

export const undecidedItems = () => review.items.filter((item) => item.decision === "undecided");

const selectedItem = () => (review && review.selected ? findItem(review.selected) : null);

function redraw() {
  renderNote(review.text, review.items, selectedItem());
  renderEvidencePanel(selectedItem());
}

/** A new review of `text` (exactly as sent) from the server's `result` for it. `fromEditor`:
 *  false for a note read from the workbench, which the editor never held. */
export function startReview(text, noteId, modelInfo, result, explain, { fromEditor = true } = {}) {
  const replaced = review ? decidedItems().length : 0;
  const table = codePointTable(text);
  const counts = { bad: 0 };
  const items = (Array.isArray(result.codes) ? result.codes : []).map((code, row) => ({
    code: String(code.code),
    system: code.system ? String(code.system) : "icd10cm",
    description: code.description ? String(code.description) : "",
    probability: typeof code.probability === "number" ? code.probability : null,
    // Records written before `score` existed carry only their probability.
    score: typeof code.score === "number" ? code.score : typeof code.probability === "number" ? code.probability : null,
    evidence: convertEvidence(code.evidence, text, table, counts),
    decision: "undecided",
    source: "model",
    row,
  }));
  review = {
    text, noteId, explain, table,
    model: modelInfo,
    truncated: Boolean(result.truncated),
    badSpans: counts.bad,
    items,
    selected: null,
    nextRow: items.length,
    fromEditor,
  };
  el.review.hidden = false;
  renderCodeList(review.items, review.selected);
  redraw();
  updateWarnings();
  const noEvidence = items.filter((item) => item.evidence.length === 0).length;
  const parts = [`${items.length} code${items.length === 1 ? "" : "s"} suggested for note ${noteId}.`];
  if (review.truncated) parts.push("Warning: the note was truncated; only its beginning was read.");
  if (noEvidence) parts.push(`${noEvidence} code${noEvidence === 1 ? " has" : "s have"} no evidence.`);
  if (replaced) parts.push(`${replaced === 1 ? "The decision" : `The ${replaced} decisions`} of the previous review ${replaced === 1 ? "was" : "were"} replaced.`);
  parts.push("Select a code to see its evidence.");
  announce(parts.join(" "));
}

/** Truncation, codes without evidence, passages that do not fit, an edited note. */
export function updateWarnings() {
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
    const model = currentModel();
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
  if (review.fromEditor && noteText() !== review.text) {
    add("The note in the editor has changed since it was coded. This review is of the text below; "
      + "code the note again to review the new text.");
  }
}

/* ------------------------------------------------------------ decisions */

function decide(item, decision) {
  item.decision = item.decision === decision ? "undecided" : decision;
  updateRow(item, review.selected);
  updateSummary(review.items);
  const words = { accepted: "accepted", rejected: "rejected", undecided: "back to undecided" };
  announce(`${item.code} ${words[item.decision]}.`);
  decisionChanged();
}

function removeAdded(item) {
  const li = rowOf(item.code);
  const next = li && (li.nextElementSibling || li.previousElementSibling);
  review.items.splice(review.items.indexOf(item), 1);
  if (review.selected === item.code) review.selected = null;
  if (li) li.remove();
  updateSummary(review.items);
  redraw();
  announce(`${item.code} removed.`);
  decisionChanged();
  const target = next ? next.querySelector(".code-select") : el.codeSearch;
  target.focus();
}

/** Adds a code found by search ({code, system, description}); one already suggested is accepted. */
export function addCode(code) {
  if (!review) return;
  const existing = findItem(code.code);
  if (existing) {
    if (existing.source === "model" && existing.decision !== "accepted") {
      existing.decision = "accepted";
      updateRow(existing, review.selected);
      updateSummary(review.items);
      announce(`${code.code} was already suggested; it is now accepted.`);
      decisionChanged();
    } else {
      announce(`${code.code} is already in the list (${existing.decision}).`);
    }
    return;
  }
  const item = addedItem(code);
  review.items.push(item);
  el.codeList.append(codeRow(item, item.row, review.selected));
  updateSummary(review.items);
  renderNote(review.text, review.items, selectedItem());
  announce(`${item.code} added.`);
  decisionChanged();
}

/** A code the coder added ({code, system, description}), with the review's next row id. */
function addedItem(code) {
  const item = {
    code: String(code.code),
    system: code.system ? String(code.system) : "icd10cm",
    description: code.description ? String(code.description) : "",
    probability: null,
    score: null,
    evidence: [],
    decision: "added",
    source: "coder",
    row: review.nextRow,
  };
  review.nextRow += 1;
  return item;
}

/** Puts a saved decision ({accepted, rejected, added: [{code, system}]}) back on the review;
 *  a code it names that the review lacks is added as the coder's. */
export function applyDecision(decision) {
  if (!review || !decision) return;
  const verdicts = new Map();
  for (const code of decision.accepted || []) verdicts.set(String(code), "accepted");
  for (const code of decision.rejected || []) verdicts.set(String(code), "rejected");
  for (const item of review.items) {
    if (verdicts.has(item.code)) item.decision = verdicts.get(item.code);
  }
  for (const added of decision.added || []) {
    if (findItem(String(added.code))) continue;
    review.items.push(addedItem(added));
  }
  renderCodeList(review.items, review.selected);
  redraw();
}

/** The review's decisions as the workbench stores them (undecided codes are left out). */
export function decisionBody() {
  const pick = (decision) => review.items.filter((item) => item.decision === decision);
  return {
    accepted: pick("accepted").map((item) => item.code),
    rejected: pick("rejected").map((item) => item.code),
    added: pick("added").map((item) => ({ code: item.code, system: item.system })),
  };
}

/* ------------------------------------------------------------ selection */

/** Selects a code (or clears the selection when it is already selected). */
function selectCode(code, { toggle = true, scroll = true } = {}) {
  if (!review) return;
  const previous = selectedItem();
  review.selected = toggle && review.selected === code ? null : code;
  if (previous) updateRow(previous, review.selected);
  const item = selectedItem();
  if (item) updateRow(item, review.selected);
  redraw();
  if (!item) {
    announce("No code selected.");
    return;
  }
  const shown = marks();
  if (item.source === "coder") {
    announce(`${item.code} selected. Added by the coder; it has no model evidence.`);
  } else if (shown.length === 0) {
    announce(`${item.code} selected. No evidence found for this code.`);
  } else {
    announce(`${item.code} selected: ${shown.length} evidence passage${shown.length === 1 ? "" : "s"} highlighted in the text.`);
    if (scroll) scrollToMark(shown[0]);
  }
}

/** The code a highlight stands for: a mark's own; for another codes' passage, the next of its
 *  codes after the selected one (so that repeated Enter goes through all of them). */
function highlightCode(node) {
  if (node.tagName === "MARK") return node.dataset.code;
  const codes = node.dataset.codes.split(" ");
  const current = codes.indexOf(review.selected);
  return codes[(current + 1) % codes.length];
}

/** Selects the code of a highlight and keeps focus at the same place in the re-drawn text. */
function selectFromHighlight(node, { focus }) {
  const u0 = Number(node.dataset.u0);
  selectCode(highlightCode(node), { toggle: false, scroll: false });
  if (!focus) return;
  const target = marks().find((m) => Number(m.dataset.u0) <= u0 && u0 < Number(m.dataset.u0) + m.textContent.length)
    || marks()[0];
  if (target) target.focus({ preventScroll: true });
}

/* ------------------------------------------------------------ keyboard and pointer */

/** In the coded text: the arrows (and Home, End) move between highlights, Enter or Space
 *  selects a highlight's code, Escape goes back to the text itself. */
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

/** In the code list: Up and Down between the codes, Left and Right between a code's buttons. */
function onCodeListKey(event) {
  const target = event.target;
  if (!target.classList || !["ArrowDown", "ArrowUp", "ArrowLeft", "ArrowRight"].includes(event.key)) return;
  let group = null;
  let step = 0;
  if (target.classList.contains("code-select") && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    group = Array.from(el.codeList.querySelectorAll(".code-select"));
    step = event.key === "ArrowDown" ? 1 : -1;
  } else if (target.closest(".decision") && (event.key === "ArrowLeft" || event.key === "ArrowRight")) {
    group = Array.from(target.closest(".decision").querySelectorAll("button"));
    step = event.key === "ArrowRight" ? 1 : -1;
  }
  if (!group) return;
  const i = group.indexOf(target) + step;
  if (i >= 0 && i < group.length) {
    event.preventDefault();
    group[i].focus();
  }
}

function onCodeListClick(event) {
  const button = event.target.closest("button");
  if (!button || !review) return;
  const item = findItem(button.dataset.code || button.closest(".code-row").dataset.code);
  if (!item) return;
  if (button.classList.contains("code-select")) selectCode(item.code);
  else if (button.dataset.action === "remove") removeAdded(item);
  else if (button.dataset.action) decide(item, button.dataset.action);
}

export function wireReview() {
  el.codeList.addEventListener("click", onCodeListClick);
  el.codeList.addEventListener("keydown", onCodeListKey);
  el.noteView.addEventListener("click", (event) => {
    const node = event.target.closest("mark, .ev-other");
    if (node && review) selectFromHighlight(node, { focus: true });
  });
  el.noteView.addEventListener("keydown", onNoteViewKey);
  el.showAll.addEventListener("change", () => {
    if (review) renderNote(review.text, review.items, selectedItem());
  });
}
