// Building the page from API values: text only. `el` sets strings with textContent
// (never innerHTML), so a value holding markup shows as the characters it is.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === "text") {
      node.textContent = String(value);
    } else if (name.startsWith("on")) {
      throw new Error("event handlers go in attrs.on, never in attributes");
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

// A table of rows (arrays of cell values or nodes) under a header row.
export function table(headers, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) =>
      el("td", {}, cell instanceof Node ? cell : display(cell)))))));
}

// Any API value as text: objects as compact JSON, null as an em dash.
export function display(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// An ISO time from the API, shorter: "2026-12-03 12:40:58Z" (no T, no fraction).
export function when(iso) {
  return typeof iso === "string" ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : display(iso);
}

export function count(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : display(n);
}

export function bytes(n) {
  if (typeof n !== "number") return display(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function rate(n) {
  return typeof n === "number" ? `${n.toLocaleString("en-US", { maximumFractionDigits: 1 })}/s` : display(n);
}

export function failureText(err) {
  if (!err) return "";
  const field = err.details && err.details.field ? ` (${err.details.field})` : "";
  const reason = err.details && err.details.reason ? ` [${err.details.reason}]` : "";
  return `${err.code || "ERROR"}${field}${reason}: ${err.message}`;
}

// Run `fn` at most once per `ms` after the calls stop (checking SQL as the user types).
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => fn(...args), ms);
  };
}
