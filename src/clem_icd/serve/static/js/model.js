/* The model card (GET /v1/model): what the model is, shown in the header, and what its scores
 * are called. A model fused by reciprocal rank (score_kind "rank score") gives rank scores, which
 * the page shows and exports as rank scores, never as a probability or a percentage.
 */

import { api, describeError, retrySeconds } from "./api.js";
import { clearError, el, showError } from "./dom.js";
import { formatNumber, shortName } from "./format.js";

let model = null;
let retry = null;
const listeners = [];

/** The model card, or null while not connected. */
export const currentModel = () => model;

/** The largest note the server accepts (code points), or null when not known. */
export const maxChars = () => (model && model.max_chars) || null;

/** "probability" or "rank score". */
export const scoreName = () => (model && model.score_kind === "rank score" ? "rank score" : "probability");

/** `listener()` runs each time the model card has loaded. */
export function onModelLoaded(listener) {
  listeners.push(listener);
}

export async function loadModelInfo() {
  try {
    model = await api("v1/model", { timeoutMs: 30000 });
  } catch (err) {
    model = null;
    clearTimeout(retry);
    if (err.status === 503) {  // still loading: ask again when the server says
      const seconds = retrySeconds(err.retryAfter);
      retry = setTimeout(loadModelInfo, Math.min(30, seconds === null ? 5 : Math.max(1, seconds)) * 1000);
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
  showMethods(Array.isArray(model.explain_methods) ? model.explain_methods.map(String) : []);
  for (const listener of listeners) listener();
}

/** The evidence methods this model has, keeping the coder's choice where it still exists. */
function showMethods(methods) {
  if (!methods.length) return;
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
