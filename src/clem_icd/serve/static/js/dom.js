/* The page's elements, and its two live regions (status and errors).
 *
 * Module scripts run once the document is parsed (they are deferred), so every element exists
 * when this module is evaluated: it looks them up once.
 */

export const byId = (id) => document.getElementById(id);

export const el = Object.freeze({
  modelInfo: byId("model-info"),
  connectionForm: byId("connection-form"),
  token: byId("token"),
  tokenError: byId("token-error"),
  remember: byId("remember-token"),
  explain: byId("explain"),
  threshold: byId("threshold"),
  thresholdLabel: byId("threshold-label"),
  topK: byId("top-k"),
  form: byId("note-form"),
  noteId: byId("note-id"),
  noteFile: byId("note-file"),
  noteText: byId("note-text"),
  noteStats: byId("note-stats"),
  codeButton: byId("code-button"),
  clearButton: byId("clear-button"),
  status: byId("status"),
  error: byId("error"),
  review: byId("review"),
  warnings: byId("warnings"),
  noteView: byId("note-view"),
  showAll: byId("show-all"),
  codeList: byId("code-list"),
  codesSummary: byId("codes-summary"),
  evidencePanel: byId("evidence-panel"),
  evidenceHeading: byId("evidence-heading"),
  evidenceList: byId("evidence-list"),
  evidenceEmpty: byId("evidence-empty"),
  codeSearch: byId("code-search"),
  codeOptions: byId("code-options"),
  exportJson: byId("export-json"),
  exportFhir: byId("export-fhir"),
});

export function announce(message) {
  el.status.textContent = message;
}

// The alert region stays in the page (empty when there is no error), so that screen readers
// announce each new message.
export function showError(message) {
  el.error.textContent = message;
}

export function clearError() {
  el.error.textContent = "";
}

/** Text for screen readers only (the button's visible label says less). */
export function visuallyHidden(text) {
  const span = document.createElement("span");
  span.className = "vh";
  span.textContent = text;
  return span;
}
