/* The coded text with its evidence marked, and the selected code's evidence list.
 *
 * The text shown is exactly the string that was coded, in a <pre> (white-space: pre-wrap). The
 * selected code's passages are <mark>s whose textContent is exactly note[start:end] (their
 * data-start / data-end are the server's code point offsets); the other codes' passages, when
 * shown, are .ev-other spans naming their codes. Nothing here holds state: review.js draws
 * from its own.
 */

import { el, visuallyHidden } from "./dom.js";
import { shorten } from "./format.js";

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

/** Draws `text` with the evidence of `selected` (an item, or null) marked and, when the coder
 *  asks, the other items' evidence highlighted. */
export function renderNote(text, items, selected) {
  const fragment = document.createDocumentFragment();
  const marks = selected ? mergedRanges(selected.evidence) : [];
  const others = [];
  if (el.showAll.checked) {
    for (const item of items) {
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
  el.noteView.textContent = "";
  el.noteView.append(fragment);
}

/** The selected code's passages (the marks just drawn) as a list of links, or why it has none. */
export function renderEvidencePanel(item) {
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
  marks().forEach((mark, i) => {
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

/** The selected code's passages, in text order. */
export const marks = () => Array.from(el.noteView.querySelectorAll("mark"));

/** Every highlighted passage (the selected code's and the others'), in text order. */
export const highlights = () => Array.from(el.noteView.querySelectorAll("mark, .ev-other"));

/** Brings a passage into view: inside the note's own scroll box, then the page if need be. */
export function scrollToMark(mark) {
  const view = el.noteView;
  const viewRect = view.getBoundingClientRect();
  const rect = mark.getBoundingClientRect();
  if (view.scrollHeight > view.clientHeight) {
    view.scrollTop += rect.top - viewRect.top - (view.clientHeight - rect.height) / 2;
  }
  const after = mark.getBoundingClientRect();
  if (after.top < 0 || after.bottom > window.innerHeight) mark.scrollIntoView({ block: "center", inline: "nearest" });
}

/** The evidence list's links move focus to their passage. */
export function wireEvidenceList() {
  el.evidenceList.addEventListener("click", (event) => {
    const button = event.target.closest("button.evidence-link");
    if (!button) return;
    const mark = marks()[Number(button.dataset.mark)];
    if (!mark) return;
    scrollToMark(mark);
    mark.focus({ preventScroll: true });
  });
}
