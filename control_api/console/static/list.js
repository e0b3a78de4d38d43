// The pipelines list: one row per pipeline with its counters, refreshed every few
// seconds. `list` names the pipelines; a `get` per pipeline adds counters and files.

import { call } from "./api.js";
import { bytes, clear, count, display, el, failureText, table } from "./dom.js";

const REFRESH_MS = 3000;
const MAX_DETAILED = 200; // counters for at most this many rows per refresh

function statusBadge(status) {
  return el("span", { class: `status status-${status}`, text: status });
}

function row(pipeline, detail) {
  const d = detail || {};
  const files = d.files || [];
  const last = files.length ? files[files.length - 1] : null;
  const link = el("a", { href: `#/p/${encodeURIComponent(pipeline.name)}`, text: pipeline.name });
  return [
    link,
    statusBadge(d.status || pipeline.status),
    pipeline.runner ? pipeline.runner.type : null,
    count(d.events_in),
    count(d.events_out),
    count(d.errors),
    count(d.backlog_events),
    last ? el("span", { class: "path", title: `${last.rows} rows, ${bytes(last.bytes)}`, text: last.path }) : "—",
  ];
}

export function listView(root, { can, onFailure, go }) {
  const status = el("p", { class: "muted", id: "list-status" });
  const body = el("div", { id: "pipelines" });
  const header = el("div", { class: "title-row" },
    el("h1", { text: "Pipelines" }),
    can("create") ? el("button", { type: "button", id: "new-pipeline", on: { click: () => go("#/new") } }, "New pipeline") : null);
  root.append(header, status, body);
  let stopped = false;

  if (!can("list")) {
    status.textContent = "This key may not read pipelines: its scope only lets it send events "
      + "(POST /pipelines/<name>/events or the ingest operation).";
    return () => {};
  }

  async function refresh() {
    try {
      const { pipelines } = await call("list");
      const details = await Promise.allSettled(pipelines.slice(0, MAX_DETAILED)
        .map((p) => call("get", { pipeline_id: p.id })));
      if (stopped) return;
      const rows = pipelines.map((p, i) => row(p, details[i] && details[i].status === "fulfilled" ? details[i].value : null));
      clear(body).append(pipelines.length
        ? table(["Name", "Status", "Runner", "Events in", "Events out", "Errors", "Backlog", "Last file"], rows, { id: "pipelines-table" })
        : el("p", { class: "muted", text: "No pipelines yet." }));
      status.textContent = `${display(pipelines.length)} pipelines · updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      onFailure(err);
      if (!stopped) status.textContent = `Could not refresh: ${failureText(err)}`;
    }
  }
  refresh();
  const timer = window.setInterval(refresh, REFRESH_MS);
  return () => {
    stopped = true;
    window.clearInterval(timer);
  };
}
