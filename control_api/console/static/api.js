// The console's only way to the server: the public API, called with the key the user
// pasted. The key lives in sessionStorage (this tab, until it closes) and travels only
// in the Authorization header; it is never put in a URL, the page, or the console log.

const KEY = "pipeline-do.key";

export class ApiFailure extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export function storedKey() {
  return window.sessionStorage.getItem(KEY);
}

export function keepKey(key) {
  window.sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  window.sessionStorage.removeItem(KEY);
}

async function envelopeOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_err) {
    throw new ApiFailure(response.status, "BAD_REPLY", `the server answered ${response.status} without JSON`);
  }
  if (!body || body.success !== true) {
    const error = (body && body.error) || {};
    throw new ApiFailure(response.status, error.code || "ERROR",
      error.message || `request failed (${response.status})`, error.details);
  }
  return body.data;
}

// POST /pipeline {operation, parameters, options}: resolves to `data`, rejects with ApiFailure.
export async function call(operation, parameters = {}, options = undefined, key = storedKey()) {
  const body = { operation, parameters };
  if (options) body.options = options;
  const response = await fetch("/pipeline", {
    method: "POST",
    headers: { "Authorization": `Bearer ${key || ""}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  return envelopeOf(response);
}
