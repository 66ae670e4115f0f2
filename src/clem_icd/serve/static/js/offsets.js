/* Offsets and line endings: no DOM, no state.
 *
 * The server's evidence offsets count Unicode code points into the note exactly as it was sent
 * (Python string offsets); JavaScript strings count UTF-16 code units. The page keeps the string
 * it sent and maps code point offsets to UTF-16 through a table built from that very string.
 *
 * A <textarea> turns CRLF and CR into LF in its value; the page keeps the raw string beside it
 * (note.js) and applies each edit to it with `rawIndex` and `spliceRaw`.
 */

export const normalizeNewlines = (s) => s.replace(/\r\n?/g, "\n");

/** Index into `raw` of index `n` of normalizeNewlines(raw) (a CRLF is one character there). */
export function rawIndex(raw, n) {
  let i = 0;
  for (let k = 0; k < n && i < raw.length; k += 1) {
    i += raw.charCodeAt(i) === 13 && raw.charCodeAt(i + 1) === 10 ? 2 : 1;
  }
  return i;
}

/** raw[0:start] + inserted + raw[end:], such that its normalized form is `view` (the textarea's
 *  value after the edit). Lone CRs just before a joint that now meets an LF would pair with it
 *  into a CRLF (one line break, where the textarea shows two): those CRs become LFs. */
export function spliceRaw(raw, start, end, inserted, view) {
  let left = raw.slice(0, start);
  let middle = inserted;
  const right = raw.slice(end);
  const crsToLf = (s) => s.replace(/\r+$/, (crs) => "\n".repeat(crs.length));
  if (left.endsWith("\r") && (middle || right).startsWith("\n")) left = crsToLf(left);
  if (middle.endsWith("\r") && right.startsWith("\n")) middle = crsToLf(middle);
  const joined = left + middle + right;
  return normalizeNewlines(joined) === view ? joined : view;  // out of step: the textarea wins
}

/** UTF-16 index of every code point index 0..n (n = number of code points). */
export function codePointTable(text) {
  const table = [];
  let unit = 0;
  for (const ch of text) {
    table.push(unit);
    unit += ch.length;
  }
  table.push(unit);
  return table;
}

export function countCodePoints(text) {
  let n = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i += 1;
    }
    n += 1;
  }
  return n;
}

/** "CRLF", "LF", "CR", "mixed" or "none". */
export function lineEndings(text) {
  const crlf = (text.match(/\r\n/g) || []).length;
  const cr = (text.match(/\r(?!\n)/g) || []).length;
  const lf = (text.match(/(^|[^\r])\n/g) || []).length;
  const kinds = [crlf && "CRLF", lf && "LF", cr && "CR"].filter(Boolean);
  return kinds.length === 0 ? "none" : kinds.length === 1 ? kinds[0] : "mixed";
}

/** Evidence spans with their UTF-16 offsets (u0, u1), in text order. A span whose offsets do not
 *  fit the text, or whose text is not text[start:end], is dropped and counted in `counts.bad`. */
export function convertEvidence(spans, text, table, counts) {
  const out = [];
  for (const span of Array.isArray(spans) ? spans : []) {
    const start = span && span.start;
    const end = span && span.end;
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end >= table.length) {
      counts.bad += 1;
      continue;
    }
    const u0 = table[start];
    const u1 = table[end];
    const slice = text.slice(u0, u1);
    if (typeof span.text === "string" && span.text !== slice) {
      counts.bad += 1;
      continue;
    }
    out.push({ start, end, score: typeof span.score === "number" ? span.score : null, text: slice, u0, u1 });
  }
  out.sort((a, b) => a.u0 - b.u0 || a.u1 - b.u1);
  return out;
}
