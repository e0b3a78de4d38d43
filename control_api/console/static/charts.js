// Line charts drawn as SVG elements (createElementNS), from samples kept in the page.
// No chart library: a few polylines and labels are all the console needs, and nothing
// has to be vendored or fetched. A missing sample (a poll that failed) breaks the line,
// so an outage shows as a gap; a flush shows as a jump in the "out" line.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 140;
const PAD = { left: 44, right: 8, top: 8, bottom: 18 };

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function text(x, y, content, attrs = {}) {
  const node = svg("text", { x, y, ...attrs });
  node.textContent = content;
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

// samples: [{t: ms since epoch, values: {key: number|null} | null}], oldest first.
// series: [{key, label, cls}]; spanMs: how much time the x axis shows, ending now.
export function lineChart({ id, title, unit, series, samples, spanMs, format }) {
  const now = samples.length ? samples[samples.length - 1].t : Date.now();
  const start = now - spanMs;
  const shown = samples.filter((s) => s.t >= start);
  let max = 0;
  for (const s of shown) {
    if (!s.values) continue;
    for (const { key } of series) {
      const v = s.values[key];
      if (typeof v === "number" && v > max) max = v;
    }
  }
  const top = niceMax(max);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - start) / spanMs) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", class: "chart" });
  const label = svg("title");
  label.textContent = title;
  root.append(label);
  for (const fraction of [0, 0.5, 1]) {
    const gy = PAD.top + plotH - fraction * plotH;
    root.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: gy, y2: gy, class: "grid" }));
    root.append(text(PAD.left - 4, gy + 4, format(top * fraction), { class: "axis", "text-anchor": "end" }));
  }
  const ago = spanMs >= 120000 ? `−${Math.round(spanMs / 60000)} min` : `−${Math.round(spanMs / 1000)} s`;
  root.append(text(PAD.left, HEIGHT - 4, ago, { class: "axis" }));
  root.append(text(WIDTH - PAD.right, HEIGHT - 4, "now", { class: "axis", "text-anchor": "end" }));

  for (const { key, cls } of series) {
    let points = [];
    const flush = () => {
      if (points.length === 1) {
        const [px, py] = points[0].split(",");
        root.append(svg("circle", { cx: px, cy: py, r: 2, class: `dot ${cls}` }));
      } else if (points.length > 1) {
        root.append(svg("polyline", { points: points.join(" "), class: `line ${cls}` }));
      }
      points = [];
    };
    for (const s of shown) {
      const v = s.values ? s.values[key] : null;
      if (typeof v === "number") points.push(`${x(s.t).toFixed(1)},${y(v).toFixed(1)}`);
      else flush();
    }
    flush();
  }

  const last = [...shown].reverse().find((s) => s.values);
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const { key, label: name, cls } of series) {
    const value = last ? last.values[key] : null;
    const item = document.createElement("span");
    item.className = `key ${cls}`;
    item.dataset.series = key;
    item.dataset.last = typeof value === "number" ? String(value) : "";
    item.textContent = `${name} ${typeof value === "number" ? format(value) : "—"}${unit}`;
    legend.append(item);
  }
  const figure = document.createElement("figure");
  figure.className = "chart-box";
  figure.dataset.chart = id;
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption, root, legend);
  return figure;
}
