/* Talking to the service: the fetch wrapper, the access token, and errors in words.
 *
 * Privacy: a message shows the server's one-line `detail`, and for a 422 only each item's `loc`
 * and `msg`, never its `input` (which may be note text). The token goes to sessionStorage only
 * when the coder asks, never into the address.
 */

import { el } from "./dom.js";
import { formatNumber } from "./format.js";

const TOKEN_KEY = "clem-icd.token";
const REQUEST_TIMEOUT_MS = 180000;

export class ApiError extends Error {
  constructor(status, detail, retryAfter, kind) {
    super(`HTTP ${status}`);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
    this.kind = kind || "http";
  }
}

/** The server's detail as one short line; for a 422 list only loc and msg (never input). */
function detailText(body) {
  if (!body || body.detail === undefined || body.detail === null) return "";
  let text;
  if (Array.isArray(body.detail)) {
    text = body.detail.map((item) => {
      if (!item || typeof item !== "object") return String(item);
      const loc = Array.isArray(item.loc) ? item.loc.join(".") : "";
      return loc ? `${loc}: ${item.msg || ""}` : String(item.msg || "");
    }).join("; ");
  } else {
    text = String(body.detail);
  }
  text = text.replace(/\s+/g, " ").trim();
  return text.length > 300 ? `${text.slice(0, 299)}…` : text;
}

/** Seconds from a Retry-After header (seconds or an HTTP date), or null. */
export function retrySeconds(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

/** What went wrong, for the coder; `maxChars` (the model card's) makes a 413 say the limit. */
export function describeError(err, maxChars = null) {
  const detail = err.detail ? `: ${err.detail}` : "";
  if (err.kind === "timeout") {
    return "No answer from the server in time (the page stopped waiting after 3 minutes). "
      + "Try again, or choose the attention evidence method, which is the fastest.";
  }
  if (err.kind === "network") {
    return "Could not reach the server. Check that it is running and that this page was opened from it, "
      + "then try again.";
  }
  switch (err.status) {
    case 401:
    case 403:
      return `The server did not accept the access token (${err.status}${err.status === 401 ? " Unauthorized" : " Forbidden"}). `
        + "Enter the right token in “Access token” and try again.";
    case 413: {
      const limit = maxChars ? ` It accepts notes of at most ${formatNumber(maxChars)} characters.` : "";
      return `The note is too large for this server (413)${detail}.${limit} Shorten the note or split it, then try again.`;
    }
    case 422:
      return `The server could not accept the request (422)${detail}.`;
    case 503: {
      const seconds = retrySeconds(err.retryAfter);
      const wait = seconds !== null
        ? `Try again in ${seconds} second${seconds === 1 ? "" : "s"} (the server asked to wait that long: Retry-After ${seconds}).`
        : "Try again in a moment.";
      return `The server is busy or still starting (503)${detail}. ${wait}`;
    }
    case 504:
      return `The server took too long to code the note (504 timeout)${detail}. `
        + "Try again, or choose the attention evidence method, which is the fastest.";
    default:
      return `The server answered with an error (${err.status})${detail}.`;
  }
}

/** A request to the service (a path relative to the page) with the token; the JSON answer, or
 *  an ApiError. `options`: method, headers, body, timeoutMs. */
export async function api(path, options = {}) {
  return (await apiResponse(path, options)).body;
}

/** As api(), answering {body, headers}: the workbench needs the ETag a note was read with. */
export async function apiResponse(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Accept", "application/json");
  const token = el.token.value.trim();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), options.timeoutMs || REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body,
      signal: controller.signal,
      cache: "no-store",
      credentials: "same-origin",
      referrerPolicy: "no-referrer",
    });
  } catch (error) {
    throw new ApiError(0, "", null, controller.signal.aborted ? "timeout" : "network");
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (response.status === 401 || response.status === 403) {
    tokenRefused(token ? "The server did not accept this token." : "The server asks for a token.");
  } else if (response.ok) {
    tokenRefused("");
  }
  if (!response.ok) {
    throw new ApiError(response.status, detailText(body), response.headers.get("Retry-After"));
  }
  return { body, headers: response.headers };
}

/** JSON in a POST body. */
export const postJson = (path, value) => api(path, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify(value),
});

/* ------------------------------------------------------------ token */

/** The token field's own error (beside the field, as well as in the alert). */
function tokenRefused(message) {
  el.tokenError.textContent = message;
  if (message) el.token.setAttribute("aria-invalid", "true");
  else el.token.removeAttribute("aria-invalid");
}

export function restoreToken() {
  let saved = null;
  try {
    saved = window.sessionStorage.getItem(TOKEN_KEY);
  } catch (error) {
    saved = null;
  }
  if (saved) {
    el.token.value = saved;
    el.remember.checked = true;
  }
}

export function storeToken() {
  try {
    if (el.remember.checked && el.token.value.trim()) {
      window.sessionStorage.setItem(TOKEN_KEY, el.token.value.trim());
    } else {
      window.sessionStorage.removeItem(TOKEN_KEY);
    }
  } catch (error) {
    /* storage unavailable: the token then lives in the field only */
  }
}
