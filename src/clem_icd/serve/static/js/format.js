/* Numbers and names as the page shows them. */

export const formatNumber = (n) => n.toLocaleString("en-US");

export function formatProbability(p) {
  if (typeof p !== "number" || !Number.isFinite(p)) return "—";
  const percent = p * 100;
  return `${percent >= 10 || percent === 0 ? percent.toFixed(0) : percent.toFixed(1)}%`;
}

/** One line of at most `max` characters (code points, so an emoji is never cut in half). */
export function shorten(text, max) {
  const flat = text.replace(/\s+/g, " ").trim();
  const chars = Array.from(flat);
  return chars.length <= max ? flat : `${chars.slice(0, max - 1).join("")}…`;
}

/** The last two parts of a path-like name (an encoder may be named by its folder). */
export const shortName = (name) => name.replace(/[\\/]+$/, "").split(/[\\/]/).slice(-2).join("/");
