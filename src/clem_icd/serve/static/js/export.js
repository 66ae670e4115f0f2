/* Exporting the coder's decisions: JSON made here, the FHIR R4 Bundle made by the server
 * (POST /v1/review/fhir), which holds the one FHIR mapping of the project.
 *
 * The JSON export carries the decisions with their evidence (offsets, scores and the passage
 * texts, which a coder's system needs to show why a code was chosen), but not the whole note:
 * the coder's system already holds the note, and `text_sha256` (SHA-256 of the note's UTF-8
 * bytes, exactly as coded) lets it check that the offsets refer to that very text.
 */

import { ApiError, describeError, postJson } from "./api.js";
import { announce, el, showError } from "./dom.js";
import { currentReview, decidedItems, undecidedItems } from "./review.js";
import { sha256Hex } from "./sha256.js";

const exportSpans = (item) => item.evidence.map((s) => ({ start: s.start, end: s.end, score: s.score, text: s.text }));

const decision = (item) => ({
  code: item.code,
  system: item.system,
  description: item.description,
  probability: item.probability,
  score: item.score,
  decision: item.decision,
  evidence: exportSpans(item),
});

function fileStem(noteId) {
  const stem = noteId.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "").slice(0, 80);
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
  const open = undecidedItems().length;
  return open ? ` ${open} undecided code${open === 1 ? " is" : "s are"} not among the decisions.` : "";
}

const plural = (n) => `${n} decision${n === 1 ? "" : "s"}`;

async function exportJson() {
  const review = currentReview();
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
    decisions: decidedItems().map(decision),
    undecided: undecidedItems().map((item) => ({
      code: item.code, system: item.system, description: item.description, probability: item.probability,
      score: item.score,
    })),
  };
  download(`${fileStem(review.noteId)}-review.json`, "application/json", `${JSON.stringify(document_, null, 2)}\n`);
  announce(`Exported ${plural(document_.decisions.length)} as JSON.${undecidedWarning()}`);
}

async function exportFhir() {
  const review = currentReview();
  if (!review) return;
  const body = {
    note_id: review.noteId,
    // FHIR has no empty string: a passage without text (the server never sends one) stays out.
    decisions: decidedItems().map(decision).map((d) => ({ ...d, evidence: d.evidence.filter((s) => s.text) })),
  };
  announce("Making the FHIR Bundle…");
  let bundle;
  try {
    bundle = await postJson("v1/review/fhir", body);
  } catch (err) {
    announce("");
    showError(err instanceof ApiError ? describeError(err) : "The FHIR export failed.");
    return;
  }
  const entries = bundle && Array.isArray(bundle.entry) ? bundle.entry : [];
  download(`${fileStem(review.noteId)}-review.fhir.json`, "application/fhir+json", `${JSON.stringify(bundle, null, 2)}\n`);
  announce(`Exported ${plural(entries.length)} as a FHIR Bundle.${undecidedWarning()}`);
}

export function wireExport() {
  el.exportJson.addEventListener("click", exportJson);
  el.exportFhir.addEventListener("click", exportFhir);
}
