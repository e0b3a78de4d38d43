// The pipeline's SQL: the current text, its version history (`versions`), and an editor
// that dry-runs on recent events (`transform` with dry_run) before `transform` applies.

import { call } from "./api.js";
import { append, clear, debounce, display, el, failureText, table } from "./dom.js";

const ROWS_SHOWN = 50;

// The rows and output schema of a dry run, or nothing when there are no rows yet.
export function dryRunResult(result) {
  const names = result.output_schema.map((f) => f.name);
  const rows = result.rows.slice(0, ROWS_SHOWN).map((r) => names.map((n) => display(r[n])));
  return el("div", { class: "dry-run-result" },
    el("h4", { text: "Output schema" }),
    table(["Column", "Type"], result.output_schema.map((f) => [f.name, f.type]), { class: "schema-table" }),
    el("h4", { text: `Rows (${result.rows.length}${result.rows.length > ROWS_SHOWN ? `, first ${ROWS_SHOWN} shown` : ""})` }),
    result.rows.length
      ? table(names, rows, { class: "rows-table" })
      : el("p", { class: "muted", text: "No recent events to run it on." }));
}

export function sqlPanel(ref, { can, onFailure }) {
  const current = el("pre", { class: "sql", id: "sql-current" });
  const versionLabel = el("span", { class: "muted", id: "sql-version" });
  const history = el("ol", { class: "versions", id: "sql-versions", reversed: true });
  const versionView = el("div", { id: "sql-version-view" });
  const node = el("section", { class: "card", id: "sql-panel" },
    el("h2", {}, "SQL ", versionLabel), current,
    el("h3", { text: "Version history" }), history, versionView);
  let shownVersion = null;

  const editor = can("transform") ? el("textarea", { id: "sql-editor", rows: 5, spellcheck: "false" }) : null;
  const outcome = el("div", { id: "dry-run", "aria-live": "polite" });
  const dryRunButton = el("button", { type: "button", id: "btn-dry-run" }, "Dry run");
  const applyButton = el("button", { type: "button", id: "btn-apply", disabled: true }, "Apply (transform)");
  let checked = null; // the text whose dry run succeeded

  async function dryRun() {
    const sql = editor.value;
    applyButton.disabled = true;
    outcome.className = "muted";
    outcome.textContent = "Running on recent events…";
    try {
      const result = await call("transform", { pipeline_id: ref, sql, dry_run: true });
      if (editor.value !== sql) return; // the user typed on; a newer check follows
      checked = sql;
      applyButton.disabled = false;
      outcome.className = "ok";
      clear(outcome).append(dryRunResult(result));
    } catch (err) {
      onFailure(err);
      if (editor.value !== sql) return;
      checked = null;
      outcome.className = "error";
      clear(outcome).append(el("p", { class: "error", id: "dry-run-error", text: failureText(err) }));
    }
  }

  async function apply() {
    const sql = editor.value;
    if (sql !== checked) return;
    applyButton.disabled = true;
    try {
      const result = await call("transform", { pipeline_id: ref, sql });
      clear(outcome).append(el("p", { class: "ok", id: "apply-result",
        text: `Applied: SQL version ${result.version}, taking effect at the next epoch.` }));
      outcome.className = "ok";
    } catch (err) {
      onFailure(err);
      outcome.className = "error";
      clear(outcome).append(el("p", { class: "error", text: failureText(err) }));
    }
  }

  if (editor) {
    const check = debounce(dryRun, 700);
    editor.addEventListener("input", () => {
      applyButton.disabled = true;
      check();
    });
    dryRunButton.addEventListener("click", dryRun);
    applyButton.addEventListener("click", apply);
    node.append(el("h3", { text: "Edit" }),
      el("p", { class: "muted", text: "Checked as you type: a dry run over recent buffered events. Apply runs transform with the text that passed." }),
      editor, el("div", { class: "actions" }, dryRunButton, applyButton), outcome);
  }

  function showVersion(v) {
    clear(versionView).append(el("div", { class: "version-detail", "data-version": v.version },
      el("h4", { text: `Version ${v.version} · ${v.created_at}` }),
      el("pre", { class: "sql", text: v.sql }),
      table(["Column", "Type"], v.output_schema.map((f) => [f.name, f.type]), { class: "schema-table" }),
      editor ? el("button", { type: "button", on: { click: () => { editor.value = v.sql; dryRun(); } } }, "Edit from this version") : null));
  }

  async function loadVersions() {
    try {
      const { versions } = await call("versions", { pipeline_id: ref });
      append(clear(history), versions.slice().reverse().map((v) =>
        el("li", {}, el("button", { type: "button", class: "link", "data-version": v.version, on: { click: () => showVersion(v) } },
          `v${v.version}`), ` ${v.created_at} · `, el("code", { text: v.sql.length > 80 ? `${v.sql.slice(0, 80)}…` : v.sql }))));
    } catch (err) {
      onFailure(err);
      clear(history).append(el("li", { class: "error", text: failureText(err) }));
    }
  }

  return {
    node,
    update(pipeline, first) {
      current.textContent = pipeline.sql;
      versionLabel.textContent = `version ${pipeline.version}`;
      if (editor && first) editor.value = pipeline.sql;
      if (pipeline.version !== shownVersion) {
        shownVersion = pipeline.version;
        loadVersions();
      }
    },
  };
}
