// The console's shell: sign-in, what the key may do (the `whoami` operation), and a
// hash router (#/, #/p/<name>, #/new) so no pipeline data or key ever enters a URL path
// sent to the server.

import { ApiFailure, call, forgetKey, keepKey, storedKey } from "./api.js";
import { clear, failureText } from "./dom.js";
import { createView } from "./create.js";
import { listView } from "./list.js";
import { pipelineView } from "./pipeline.js";

const $ = (id) => document.getElementById(id);
let session = null; // {scope, prefix, operations: Set}
let current = null; // the mounted view's dispose()

function can(operation) {
  return session !== null && session.operations.has(operation);
}

async function signIn(key) {
  const me = await call("whoami", {}, undefined, key);
  session = { scope: me.scope, prefix: me.key_prefix, operations: new Set(me.operations) };
  $("who").textContent = `${me.key_prefix}… · scope ${me.scope}`;
  $("who").dataset.scope = me.scope;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("sign-in").hidden = true;
  $("nav-create").hidden = !can("create");
}

function signedOut(message = "") {
  session = null;
  forgetKey();
  if (current) current();
  current = null;
  clear($("view"));
  $("who").textContent = "";
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("key").value = "";
  $("key").focus();
}

// A view's API call failed: an unknown or revoked key sends the user back to sign-in.
function onFailure(err) {
  if (err instanceof ApiFailure && err.status === 401) signedOut(failureText(err));
}

function route() {
  if (!session) return;
  if (current) current();
  const view = clear($("view"));
  const hash = window.location.hash || "#/";
  const context = { can, onFailure, go: (target) => { window.location.hash = target; } };
  if (hash.startsWith("#/p/")) {
    current = pipelineView(view, decodeURIComponent(hash.slice(4)), context);
  } else if (hash === "#/new" && can("create")) {
    current = createView(view, context);
  } else {
    current = listView(view, context);
  }
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  $("sign-in-error").textContent = "";
  try {
    await signIn(key);
  } catch (err) {
    $("sign-in-error").textContent = failureText(err);
    return;
  }
  keepKey(key);
  $("key").value = "";
  route();
});

$("sign-out").addEventListener("click", () => signedOut());
window.addEventListener("hashchange", route);

(async () => {
  const key = storedKey();
  if (!key) {
    signedOut();
    return;
  }
  try {
    await signIn(key);
    route();
  } catch (err) {
    signedOut(failureText(err));
  }
})();
