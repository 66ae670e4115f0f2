/* Adding a missing code: a combobox (ARIA 1.2 pattern, list autocomplete) searching the model's
 * codes (GET /v1/codes) as the coder types. Down and Up move through the results, Enter adds the
 * highlighted one (or the only one), Escape closes the list, then clears the box.
 */

import { ApiError, api, describeError } from "./api.js";
import { announce, byId, el, showError } from "./dom.js";
import { addCode, findItem } from "./review.js";

const QUERY_MAX = 200;  // the server's limit on `q`
const search = { options: [], active: -1, seq: 0, timer: null };

function closeOptions() {
  el.codeOptions.hidden = true;
  el.codeOptions.textContent = "";
  el.codeSearch.setAttribute("aria-expanded", "false");
  el.codeSearch.removeAttribute("aria-activedescendant");
  search.options = [];
  search.active = -1;
}

function renderOptions() {
  el.codeOptions.textContent = "";
  search.options.forEach((code, i) => {
    const li = document.createElement("li");
    li.id = `code-option-${i}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", i === search.active ? "true" : "false");
    li.dataset.index = String(i);
    const id = document.createElement("span");
    id.className = "code-id";
    id.textContent = code.code;
    li.append(id, ` ${code.description || ""}`);
    if (findItem(code.code)) {
      const mark = document.createElement("span");
      mark.className = "meta-note";
      mark.textContent = " · already in the list";
      li.append(mark);
    }
    el.codeOptions.append(li);
  });
  const open = search.options.length > 0;
  el.codeOptions.hidden = !open;
  el.codeSearch.setAttribute("aria-expanded", open ? "true" : "false");
  if (search.active >= 0) {
    el.codeSearch.setAttribute("aria-activedescendant", `code-option-${search.active}`);
    const active = byId(`code-option-${search.active}`);
    if (active) active.scrollIntoView({ block: "nearest" });
  } else {
    el.codeSearch.removeAttribute("aria-activedescendant");
  }
}

async function runSearch() {
  const query = el.codeSearch.value.trim().slice(0, QUERY_MAX);
  const seq = ++search.seq;  // an answer to an older query is dropped
  if (!query) {
    closeOptions();
    return;
  }
  try {
    const data = await api(`v1/codes?q=${encodeURIComponent(query)}&limit=20`, { timeoutMs: 30000 });
    if (seq !== search.seq) return;
    search.options = data && Array.isArray(data.codes) ? data.codes.filter((c) => c && c.code) : [];
    search.active = -1;
    renderOptions();
    announce(search.options.length
      ? `${search.options.length} matching code${search.options.length === 1 ? "" : "s"}; use the Down arrow to choose.`
      : "No code of this model matches.");
  } catch (err) {
    if (seq !== search.seq) return;
    closeOptions();
    showError(err instanceof ApiError ? describeError(err) : "The code search failed.");
  }
}

function chooseOption(index) {
  const code = search.options[index];
  if (!code) return;
  el.codeSearch.value = "";
  closeOptions();
  addCode(code);
}

function onSearchKey(event) {
  const n = search.options.length;
  switch (event.key) {
    case "ArrowDown":
      if (n) {
        event.preventDefault();
        search.active = (search.active + 1) % n;
        renderOptions();
      }
      break;
    case "ArrowUp":
      if (n) {
        event.preventDefault();
        search.active = search.active <= 0 ? n - 1 : search.active - 1;
        renderOptions();
      }
      break;
    case "Enter":
      if (n && search.active >= 0) {
        event.preventDefault();
        chooseOption(search.active);
      } else if (n === 1) {
        event.preventDefault();
        chooseOption(0);
      }
      break;
    case "Escape":
      if (!el.codeOptions.hidden) {
        event.preventDefault();
        search.seq += 1;
        closeOptions();
      } else if (el.codeSearch.value) {
        event.preventDefault();
        el.codeSearch.value = "";
      }
      break;
    case "Tab":
      search.seq += 1;
      closeOptions();
      break;
    default:
      break;
  }
}

export function wireSearch() {
  el.codeSearch.addEventListener("input", () => {
    clearTimeout(search.timer);
    search.timer = setTimeout(runSearch, 150);
  });
  el.codeSearch.addEventListener("keydown", onSearchKey);
  el.codeSearch.addEventListener("blur", () => {
    setTimeout(() => {
      if (document.activeElement !== el.codeSearch) closeOptions();
    }, 0);
  });
  el.codeOptions.addEventListener("mousedown", (event) => event.preventDefault());  // keep focus in the box
  el.codeOptions.addEventListener("click", (event) => {
    const option = event.target.closest("[role='option']");
    if (option) chooseOption(Number(option.dataset.index));
  });
}
