/* The code list: one row per code (select button, score, state badge, decision buttons) and the
 * summary above it. Drawing only; review.js owns the items and their decisions.
 */

import { el, visuallyHidden } from "./dom.js";
import { formatProbability } from "./format.js";

const LABELS = { accepted: "Accepted", rejected: "Rejected", added: "Added", undecided: "Undecided" };

export function renderCodeList(items, selectedCode) {
  el.codeList.textContent = "";
  items.forEach((item, index) => el.codeList.append(codeRow(item, index, selectedCode)));
  updateSummary(items);
}

export function updateSummary(items) {
  const counts = { accepted: 0, rejected: 0, added: 0, undecided: 0 };
  for (const item of items) counts[item.decision] += 1;
  el.codesSummary.textContent = items.length === 0
    ? "The model suggested no code for this note. Add codes below if needed."
    : `${counts.accepted} accepted, ${counts.rejected} rejected, ${counts.added} added, ${counts.undecided} undecided.`;
}

/** The score as text: a probability in percent, a rank score without a percent sign. */
function scoreCell(item) {
  const cell = document.createElement("span");
  cell.className = "code-prob";
  if (item.score === null) {
    cell.textContent = "added";
    return cell;
  }
  if (item.probability !== null) {
    cell.append(visuallyHidden("probability "), formatProbability(item.probability));
  } else {
    cell.append(visuallyHidden("rank score "), Number.isFinite(item.score) ? item.score.toFixed(3) : "—");
    cell.title = "Rank score (reciprocal rank fusion), not a probability";
  }
  const bar = document.createElement("span");
  bar.className = "prob-bar";
  bar.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.style.width = `${Math.max(0, Math.min(1, item.score)) * 100}%`;
  bar.append(fill);
  cell.append(bar);
  return cell;
}

function metaNote(item) {
  const span = document.createElement("span");
  if (item.source === "coder") {
    span.className = "meta-note";
    span.textContent = "Added by the coder; no model evidence.";
  } else if (item.evidence.length === 0) {
    span.className = "no-evidence";
    span.textContent = "⚠ No evidence found for this code";
  } else {
    span.className = "meta-note";
    span.textContent = `${item.evidence.length} evidence passage${item.evidence.length === 1 ? "" : "s"}`;
  }
  return span;
}

function decisionButton(className, action, label, code) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.dataset.action = action;
  button.dataset.code = code;
  button.append(label, visuallyHidden(` ${code}`));
  return button;
}

/** The row of `item`; `index` (never reused within a review) makes the ids of its button and badge. */
export function codeRow(item, index, selectedCode) {
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
  select.append(codeId, " ", description, " ", scoreCell(item));

  const meta = document.createElement("div");
  meta.className = "code-meta";
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.id = `code-state-${index}`;
  meta.append(badge, metaNote(item));
  select.setAttribute("aria-describedby", badge.id);

  const group = document.createElement("div");
  group.className = "decision";
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Decision for ${item.code}`);
  if (item.source === "coder") {
    group.append(decisionButton("remove", "remove", "Remove", item.code));
  } else {
    group.append(decisionButton("accept", "accepted", "Accept", item.code),
                 decisionButton("reject", "rejected", "Reject", item.code));
  }
  li.append(select, meta, group);
  updateRow(item, selectedCode, li);
  return li;
}

export function rowOf(code) {
  return Array.from(el.codeList.children).find((li) => li.dataset.code === code) || null;
}

/** The row's state: selected or not, its decision's badge and pressed button. */
export function updateRow(item, selectedCode, li = rowOf(item.code)) {
  if (!li) return;
  li.dataset.decision = item.decision;
  const selected = selectedCode === item.code;
  li.classList.toggle("selected", selected);
  li.querySelector(".code-select").setAttribute("aria-pressed", selected ? "true" : "false");
  li.querySelector(".badge").textContent = LABELS[item.decision];
  for (const button of li.querySelectorAll("button[data-action='accepted'], button[data-action='rejected']")) {
    button.setAttribute("aria-pressed", item.decision === button.dataset.action ? "true" : "false");
  }
}
