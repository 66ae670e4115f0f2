/* CLEM-ICD coding review page: plain JavaScript modules, no dependencies, nothing loaded from
 * elsewhere (the page's Content-Security-Policy allows scripts from this server only).
 *
 * Privacy: the note text is protected health information. No module logs it, stores it (only
 * the access token may go to sessionStorage, and only when the coder asks) or puts it in a
 * message.
 *
 * Modules: dom (elements, live regions), api (requests, token, errors in words), model (the
 * model card), offsets (code points, UTF-16, line endings), note (the note being written),
 * coding (POST /v1/code), review (codes, decisions, selection, keyboard), codes (the code
 * list's rows), highlight (the coded text with its evidence), search (adding a code), export
 * (JSON here, FHIR by the server), sha256, format, and with a workbench (serve --db) worklist
 * and workbench (notes read from and saved to the server). This one wires them together.
 */

import { restoreToken, storeToken } from "./api.js";
import { wireCoding } from "./coding.js";
import { el } from "./dom.js";
import { wireExport } from "./export.js";
import { wireEvidenceList } from "./highlight.js";
import { loadModelInfo, onModelLoaded } from "./model.js";
import { onNoteChange, updateNoteStats, wireNoteInput } from "./note.js";
import { updateWarnings, wireReview } from "./review.js";
import { wireSearch } from "./search.js";
import { connectWorkbench, wireWorkbench } from "./workbench.js";

function reconnect() {
  storeToken();
  loadModelInfo();
  connectWorkbench();
}

restoreToken();
el.token.addEventListener("change", reconnect);
el.remember.addEventListener("change", storeToken);
el.connectionForm.addEventListener("submit", (event) => {
  event.preventDefault();  // Enter in a field: (re)connect with the token
  reconnect();
});

onModelLoaded(updateNoteStats);  // the note's size beside the model's limit
onNoteChange(updateWarnings);  // an edited note no longer matches its review
wireNoteInput();
wireCoding();
wireReview();
wireEvidenceList();
wireSearch();
wireExport();
wireWorkbench();
loadModelInfo();
connectWorkbench();
