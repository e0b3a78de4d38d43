// The pipeline page's lower panels: latest files with the partition layout, dead
// letters (only where the server offers the `dead_letters` operation), and the log tail.

import { call } from "./api.js";
import { bytes, clear, count, display, el, failureText, table, when } from "./dom.js";

const LOGS_MS = 4000;
const DEAD_MS = 8000;
const FILES_SHOWN = 50;
const FIRST_COLUMNS = ["code", "message", "record", "received_at", "index"]; // then any others

export function filesPanel() {
  const layout = el("p", { id: "partition-layout" });
  const body = el("div", { id: "files" });
  const node = el("section", { class: "card", id: "files-panel" }, el("h2", { text: "Latest files" }), layout, body);
  return {
    node,
    update(pipeline) {
      const sink = pipeline.sink || {};
      clear(layout).append("Sink ", el("code", { text: display(sink.uri) }),
        " · layout ", el("code", { text: sink.partition_by ? `${sink.partition_by}/<file>` : "<file> (no partitions)" }),
        ` · ${display(sink.format)}, ${display(sink.compression)}`,
        sink.roll ? ` · roll every ${display(sink.roll.interval_seconds)} s` : "");
      const files = (pipeline.files || []).slice(-FILES_SHOWN).reverse();
      clear(body).append(files.length
        ? table(["Path", "Epoch", "Rows", "Bytes", "Event time from", "to"], files.map((f) =>
          [el("span", { class: "path", text: f.path }), display(f.epoch), count(f.rows), bytes(f.bytes),
            when(f.min_event_time), when(f.max_event_time)]), { id: "files-table" })
        : el("p", { class: "muted", text: "No files written yet." }));
    },
  };
}

// The first array in a reply: dead_letters' exact shape is the server's to define.
function entriesOf(data) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data.dead_letters)) return data.dead_letters;
  const found = data && Object.values(data).find(Array.isArray);
  return found || [];
}

export function deadLettersPanel(ref, { can, onFailure }) {
  const body = el("div", { id: "dead-letters" });
  const node = el("section", { class: "card", id: "dead-letters-panel" }, el("h2", { text: "Rejected records (dead letters)" }), body);
  const offered = can("dead_letters");
  let timer = null;
  if (!offered) body.append(el("p", { class: "muted", id: "dead-letters-unavailable", text: "Not available on this server." }));

  async function refresh() {
    try {
      const entries = entriesOf(await call("dead_letters", { pipeline_id: ref, limit: 100 }));
      const keys = new Set(entries.slice(0, 20).flatMap((e) => Object.keys(e || {})));
      const columns = [...FIRST_COLUMNS.filter((c) => keys.has(c)), ...[...keys].filter((c) => !FIRST_COLUMNS.includes(c))].slice(0, 8);
      clear(body).append(entries.length
        ? table(columns, entries.map((e) => columns.map((c) => display(e[c]))), { id: "dead-letters-table" })
        : el("p", { class: "muted", text: "No rejected records." }));
    } catch (err) {
      onFailure(err);
      clear(body).append(el("p", { class: "error", text: failureText(err) }));
    }
  }
  return {
    node,
    start() {
      if (!offered) return;
      refresh();
      timer = window.setInterval(refresh, DEAD_MS);
    },
    dispose() { window.clearInterval(timer); },
  };
}

export function logsPanel(ref, { onFailure }) {
  const level = el("select", { id: "log-level" },
    ["all", "debug", "info", "warning", "error"].map((l) => el("option", { value: l === "all" ? "" : l, text: l })));
  const body = el("div", { id: "logs" });
  const node = el("section", { class: "card", id: "logs-panel" },
    el("div", { class: "title-row" }, el("h2", { text: "Log" }),
      el("label", { for: "log-level", text: "Level at least " }), level), body);
  let timer = null;

  async function refresh() {
    const params = { pipeline_id: ref, limit: 100 };
    if (level.value) params.level = level.value;
    try {
      const { logs } = await call("logs", params);
      clear(body).append(logs.length
        ? el("ol", { class: "log", id: "log-lines" }, logs.slice().reverse().map((l) =>
          el("li", { class: `log-${l.level}`, "data-level": l.level },
            el("time", { datetime: l.timestamp, text: when(l.timestamp) }), " ", el("span", { class: "level", text: l.level }), " ",
            l.epoch === null || l.epoch === undefined ? null : el("span", { class: "muted", text: `epoch ${l.epoch} ` }),
            el("span", { class: "message", text: l.message }))))
        : el("p", { class: "muted", text: "No log lines at this level." }));
    } catch (err) {
      onFailure(err);
      clear(body).append(el("p", { class: "error", text: failureText(err) }));
    }
  }
  level.addEventListener("change", refresh);
  return {
    node,
    start() {
      refresh();
      timer = window.setInterval(refresh, LOGS_MS);
    },
    dispose() { window.clearInterval(timer); },
  };
}
