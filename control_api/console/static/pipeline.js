// One pipeline: live charts from `monitor`, lifecycle buttons, SQL (sql.js), files,
// dead letters and logs (panels.js). Every poll is an API call with the session's key.

import { call } from "./api.js";
import { lineChart } from "./charts.js";
import { bytes, clear, count, display, el, failureText, rate, when } from "./dom.js";
import { deadLettersPanel, filesPanel, logsPanel } from "./panels.js";
import { sqlPanel } from "./sql.js";

const MONITOR_MS = 2000;
const DETAIL_MS = 4000;
const WINDOW_SECONDS = 10; // throughput averaged over this; short so a burst shows at once
const SPAN_MS = 5 * 60 * 1000; // the charts' x axis at most ...
const MIN_SPAN_MS = 30 * 1000; // ... and at least, growing with the time the page is open
const KEEP = 400; // samples kept (more than SPAN_MS / MONITOR_MS)

// Statuses each lifecycle operation may start from (beam_pipelines.model.lifecycle).
const MOVES = {
  start: ["created", "stopped", "stopping", "failed"],
  pause: ["running"],
  resume: ["paused", "stopping", "failed"],
  stop: ["created", "running", "paused", "stopping", "failed"],
};

function stat(label, id) {
  const value = el("dd", { id: `stat-${id}`, text: "—" });
  return [el("dt", { text: label }), value];
}

export function pipelineView(root, ref, { can, onFailure, go }) {
  let pipeline = null;
  let stopped = false;
  const samples = [];
  const timers = [];

  const title = el("h1", { id: "pipeline-name", text: ref });
  const badge = el("span", { id: "pipeline-status", class: "status" });
  const meta = el("p", { class: "muted", id: "pipeline-meta" });
  const notice = el("div", { id: "action-result", class: "notice", role: "status", hidden: true });
  const actions = el("div", { class: "actions", id: "actions" });
  const buttons = {};
  for (const op of ["start", "pause", "resume", "stop"]) {
    if (!can(op)) continue;
    buttons[op] = el("button", { type: "button", id: `btn-${op}`, "data-op": op, on: { click: () => lifecycle(op) } },
      op[0].toUpperCase() + op.slice(1));
    actions.append(buttons[op]);
  }
  if (can("delete")) {
    actions.append(el("button", { type: "button", id: "btn-delete", class: "danger", on: { click: () => confirmDelete() } }, "Delete…"));
  }
  const confirmBox = el("div", { id: "delete-confirm", class: "card danger-zone", hidden: true });
  const stats = el("dl", { class: "stats" },
    stat("Events in", "events_in"), stat("Events out", "events_out"), stat("Rejected", "events_rejected"),
    stat("Backlog", "backlog_events"), stat("Files", "files_written"), stat("Bytes out", "bytes_out"),
    stat("Errors", "errors"), stat("Last commit", "last_commit_at"), stat("Last error", "last_error"));
  const charts = el("div", { class: "charts", id: "charts" });
  const outage = el("p", { class: "error", id: "poll-error", role: "alert", hidden: true });
  let failingSince = null;
  const sql = sqlPanel(ref, { can, onFailure });
  const files = filesPanel();
  const dead = deadLettersPanel(ref, { can, onFailure });
  const logs = logsPanel(ref, { onFailure });

  root.append(
    el("div", { class: "title-row title-left" }, title, badge),
    meta, actions, notice, confirmBox, stats, outage, charts,
    sql.node, files.node, dead.node, logs.node);

  function show(message, kind = "info") {
    notice.hidden = false;
    notice.className = `notice ${kind}`;
    clear(notice);
    if (message instanceof Node) notice.append(message);
    else notice.textContent = message;
  }

  function setStatus(status) {
    badge.textContent = status;
    badge.className = `status status-${status}`;
    badge.dataset.status = status;
    for (const [op, button] of Object.entries(buttons)) button.disabled = !MOVES[op].includes(status);
  }

  function renderCharts() {
    const open = samples.length ? samples[samples.length - 1].t - samples[0].t : 0;
    const spanMs = Math.min(SPAN_MS, Math.max(MIN_SPAN_MS, open));
    clear(charts).append(
      lineChart({ id: "throughput", title: "Throughput (events/s)", unit: "", spanMs, samples, format: rate,
        series: [{ key: "in_eps", label: "in", cls: "s-in" }, { key: "out_eps", label: "out", cls: "s-out" }] }),
      lineChart({ id: "latency", title: "Ack → committed latency (ms)", unit: " ms", spanMs, samples,
        format: (v) => v.toLocaleString("en-US", { maximumFractionDigits: 0 }),
        series: [{ key: "p50", label: "p50", cls: "s-in" }, { key: "p99", label: "p99", cls: "s-out" }] }),
      lineChart({ id: "backlog", title: "Backlog (events)", unit: "", spanMs, samples, format: count,
        series: [{ key: "backlog_events", label: "backlog", cls: "s-backlog" }] }));
  }

  async function poll() {
    let m = null;
    try {
      m = await call("monitor", { pipeline_id: pipeline ? pipeline.id : ref, window_seconds: WINDOW_SECONDS });
    } catch (err) {
      onFailure(err);
      if (err.status === 404) return gone();
      failingSince = failingSince || new Date();
      outage.hidden = false;
      outage.textContent = `monitor has failed since ${failingSince.toLocaleTimeString()}: ${failureText(err)}`;
    }
    if (stopped) return;
    if (m) {
      failingSince = null;
      outage.hidden = true;
    }
    samples.push({ t: Date.now(), values: m && {
      in_eps: m.throughput.in_eps, out_eps: m.throughput.out_eps,
      p50: m.latency_ms.p50, p99: m.latency_ms.p99, backlog_events: m.backlog_events } });
    if (samples.length > KEEP) samples.splice(0, samples.length - KEEP);
    if (m) {
      setStatus(m.status);
      for (const key of ["events_in", "events_out", "events_rejected", "backlog_events", "files_written", "errors"]) {
        document.getElementById(`stat-${key}`).textContent = count(m[key]);
      }
      document.getElementById("stat-bytes_out").textContent = bytes(m.bytes_out);
      document.getElementById("stat-last_commit_at").textContent = when(m.last_commit_at);
      document.getElementById("stat-last_error").textContent = display(m.last_error);
    }
    renderCharts();
  }

  async function detail() {
    try {
      const got = await call("get", { pipeline_id: pipeline ? pipeline.id : ref });
      if (stopped) return;
      const first = pipeline === null;
      pipeline = got;
      title.textContent = got.name;
      setStatus(got.status);
      meta.textContent = `${got.id} · runner ${got.runner.type} · SQL version ${got.version} · created ${got.created_at}`;
      files.update(got);
      sql.update(got, first);
    } catch (err) {
      onFailure(err);
      if (err.status === 404) gone();
      else show(failureText(err), "error");
    }
  }

  function gone() {
    dispose();
    clear(root).append(el("p", { class: "error", id: "not-found", text: `No pipeline ${ref}.` }),
      el("a", { href: "#/", text: "Back to the pipelines" }));
  }

  async function lifecycle(op) {
    for (const b of Object.values(buttons)) b.disabled = true;
    show(op === "stop" ? "Stopping: waiting for every buffered event to be written…" : `${op}…`);
    try {
      const result = await call(op, { pipeline_id: pipeline.id }, op === "stop" ? { timeout: 120000 } : undefined);
      setStatus(result.status);
      if (op === "stop") {
        const list = el("ul", { class: "files-flushed" }, (result.files || []).map((f) =>
          el("li", {}, el("span", { class: "path", text: f.path }), ` · ${count(f.rows)} rows · ${bytes(f.bytes)}`)));
        show(el("div", { id: "stop-result" },
          el("strong", { text: `Stopped: flushed ${count(result.flushed_events)} events into ${count((result.files || []).length)} files.` }),
          list));
      } else {
        show(`${op}: status ${result.status}`);
      }
    } catch (err) {
      onFailure(err);
      show(failureText(err), "error");
    }
    poll();
    detail();
  }

  function confirmDelete() {
    const name = pipeline ? pipeline.name : ref;
    const typed = el("input", { id: "delete-name", type: "text", autocomplete: "off", spellcheck: "false" });
    const yes = el("button", { type: "button", id: "delete-yes", class: "danger", disabled: true }, `Delete ${name}`);
    typed.addEventListener("input", () => { yes.disabled = typed.value !== name; });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await call("delete", { pipeline_id: pipeline.id });
        dispose();
        go("#/");
      } catch (err) {
        onFailure(err);
        show(failureText(err), "error");
      }
    });
    clear(confirmBox).append(
      el("p", {}, "Delete the pipeline ", el("strong", { text: name }),
        "? Its buffered events, SQL versions and logs go; files already written stay in storage."),
      el("label", { for: "delete-name", text: `Type ${name} to confirm` }), typed,
      el("div", { class: "actions" }, yes,
        el("button", { type: "button", id: "delete-cancel", on: { click: () => { confirmBox.hidden = true; } } }, "Cancel")));
    confirmBox.hidden = false;
    typed.focus();
  }

  function dispose() {
    stopped = true;
    timers.forEach((t) => window.clearInterval(t));
    timers.length = 0;
    logs.dispose();
    dead.dispose();
  }

  detail().then(() => {
    if (stopped) return;
    poll();
    timers.push(window.setInterval(poll, MONITOR_MS), window.setInterval(detail, DETAIL_MS));
    logs.start();
    dead.start();
  });
  return dispose;
}
