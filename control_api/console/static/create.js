// The create form. It builds the `create` parameters as the user types, shows the exact
// request it will send (so a person learns the API from it), and checks the whole
// definition, SQL included, with `create` and dry_run: true (nothing is created).

import { call } from "./api.js";
import { append, clear, debounce, el, failureText } from "./dom.js";
import { dryRunResult } from "./sql.js";

const TYPES = ["string", "int64", "float64", "bool", "timestamp", "date", "json"];
const FORMATS = ["parquet", "jsonl", "csv"];
const COMPRESSIONS = ["", "zstd", "snappy", "gzip", "lz4", "none"];

function field(label, input, hint = "") {
  return el("div", { class: "field" }, el("label", { for: input.id, text: label }), input,
    hint ? el("small", { class: "muted", text: hint }) : null);
}

function select(id, values, labels = {}) {
  return el("select", { id }, values.map((v) => el("option", { value: v, text: labels[v] || v })));
}

export function createView(root, { onFailure, go }) {
  const name = el("input", { id: "f-name", type: "text", autocomplete: "off", spellcheck: "false", placeholder: "clicks" });
  const fields = el("div", { id: "f-schema", class: "schema-rows" });
  const addField = el("button", { type: "button", id: "f-add-field" }, "Add field");
  const eventTime = el("select", { id: "f-event-time" });
  const sql = el("textarea", { id: "f-sql", rows: 4, spellcheck: "false" });
  sql.value = "SELECT * FROM events";
  const uri = el("input", { id: "f-sink-uri", type: "text", spellcheck: "false", placeholder: "default: <data dir>/lake/<name>" });
  const format = select("f-format", FORMATS);
  const compression = select("f-compression", COMPRESSIONS, { "": "default" });
  const partition = el("input", { id: "f-partition", type: "text", spellcheck: "false", placeholder: "dt=%Y-%m-%d/hour=%H" });
  const roll = el("input", { id: "f-roll", type: "number", min: "1", placeholder: "60" });
  const preview = el("pre", { id: "definition-json", class: "json" });
  const check = el("div", { id: "create-check", "aria-live": "polite" });
  const submit = el("button", { type: "submit", id: "f-submit" }, "Create pipeline");
  const outcome = el("p", { id: "create-error", class: "error", role: "alert" });

  function addRow(values = { name: "", type: "string", required: false }) {
    const n = el("input", { type: "text", class: "f-field-name", placeholder: "field", spellcheck: "false", "aria-label": "field name" });
    n.value = values.name;
    const t = select("", TYPES);
    t.removeAttribute("id");
    t.className = "f-field-type";
    t.setAttribute("aria-label", "field type");
    t.value = values.type;
    const r = el("input", { type: "checkbox", class: "f-field-required", "aria-label": "required" });
    r.checked = values.required;
    const row = el("div", { class: "schema-row" }, n, t, el("label", {}, r, " required"),
      el("button", { type: "button", class: "link", on: { click: () => { row.remove(); changed(); } } }, "remove"));
    fields.append(row);
  }

  function schema() {
    return [...fields.querySelectorAll(".schema-row")].map((row) => {
      const out = { name: row.querySelector(".f-field-name").value.trim(), type: row.querySelector(".f-field-type").value };
      if (row.querySelector(".f-field-required").checked) out.required = true;
      return out;
    }).filter((f) => f.name);
  }

  // The `create` parameters from the form: only what the user set, so defaults stay the server's.
  function parameters() {
    const params = { name: name.value.trim() };
    const s = schema();
    if (s.length) params.schema = s;
    if (eventTime.value) params.event_time_field = eventTime.value;
    if (sql.value.trim()) params.sql = sql.value;
    const sink = { format: format.value };
    if (uri.value.trim()) sink.uri = uri.value.trim();
    if (compression.value) sink.compression = compression.value;
    if (partition.value.trim()) sink.partition_by = partition.value.trim();
    if (roll.value) sink.roll = { interval_seconds: Number(roll.value) };
    params.sink = sink;
    return params;
  }

  function refreshEventTime() {
    const chosen = eventTime.value;
    const stamps = schema().filter((f) => f.type === "timestamp").map((f) => f.name);
    append(clear(eventTime), el("option", { value: "", text: "ingest time" }),
      stamps.map((n) => el("option", { value: n, text: n })));
    eventTime.value = stamps.includes(chosen) ? chosen : "";
  }

  let checking = 0;
  const dryRun = debounce(async () => {
    const params = parameters();
    const mine = ++checking;
    if (!params.name) {
      check.className = "muted";
      check.textContent = "Give a name to check the definition.";
      return;
    }
    try {
      const result = await call("create", { ...params, dry_run: true });
      if (mine !== checking) return;
      check.className = "ok";
      clear(check).append(el("p", { class: "ok", id: "create-check-ok", text: "Definition and SQL check out." }), dryRunResult(result));
    } catch (err) {
      onFailure(err);
      if (mine !== checking) return;
      check.className = "error";
      clear(check).append(el("p", { class: "error", id: "create-check-error", text: failureText(err) }));
    }
  }, 600);

  function changed() {
    refreshEventTime();
    preview.textContent = JSON.stringify({ operation: "create", parameters: parameters() }, null, 2);
    dryRun();
  }

  const form = el("form", { id: "create-form", autocomplete: "off" },
    field("Name", name, "letters, digits, _ or -; starts with a letter"),
    el("fieldset", {}, el("legend", { text: "Schema (none: each event kept whole in a JSON column value)" }), fields, addField),
    field("Event-time field", eventTime, "a timestamp field of the schema, or the time of ingest"),
    field("SQL", sql, "over the table events; checked as you type"),
    el("fieldset", {}, el("legend", { text: "Sink" }),
      field("URI", uri), field("Format", format), field("Compression", compression),
      field("Partitioning", partition, "time patterns and {column}"), field("Roll every (s)", roll)),
    el("div", { class: "actions" }, submit), outcome);

  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  addField.addEventListener("click", () => { addRow(); changed(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    outcome.textContent = "";
    submit.disabled = true;
    try {
      const created = await call("create", parameters());
      go(`#/p/${encodeURIComponent(created.name)}`);
    } catch (err) {
      onFailure(err);
      outcome.textContent = failureText(err);
      submit.disabled = false;
    }
  });

  root.append(el("h1", { text: "New pipeline" }),
    el("div", { class: "two-col" }, form,
      el("aside", {}, el("h2", { text: "The request it sends" }),
        el("p", { class: "muted", text: "POST /pipeline with your key as the bearer token:" }), preview,
        el("h2", { text: "Check" }), check)));
  addRow({ name: "user_id", type: "int64", required: true });
  addRow({ name: "ts", type: "timestamp", required: false });
  changed();
  return () => { checking = -1; };
}
