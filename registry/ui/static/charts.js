// Modelplane dashboard charts: small inline SVG pictures drawn from the API's JSON (no
// library, no CDN). Colours and sizes are SVG attributes, never style attributes: the
// page's Content-Security-Policy allows no inline style.
(() => {
  "use strict";

  const NS = "http://www.w3.org/2000/svg";
  const W = 520;
  const H = 170;
  const PAD = { left: 52, right: 12, top: 36, bottom: 22 };

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  // A colour per lane role; spare ones for revisions no longer live and a second primary.
  const ROLE_COLOURS = { primary: "#2557d6", canary: "#e8710a", split: "#8a3ffc", shadow: "#6b7785" };
  const SPARE = ["#0f9d8a", "#b42318", "#9a6700", "#d12771", "#3a7d1e", "#57606a"];
  // One colour per item, its role's where no earlier item took it (two primaries during
  // a rollout: the second gets a spare one).
  function palette(items) {
    const used = new Set();
    let spare = 0;
    return items.map((item) => {
      let c = ROLE_COLOURS[item.role];
      if (!c || used.has(c)) c = SPARE[spare++ % SPARE.length];
      used.add(c);
      return c;
    });
  }

  // Round up to 1, 2 or 5 × 10^k: the top of a y axis.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(value));
    for (const m of [1, 2, 5, 10]) if (value <= m * p) return m * p;
    return 10 * p;
  }

  // Runs of consecutive non-null points: a gap in the data is a gap in the line.
  function runs(points) {
    const out = [];
    let run = [];
    for (const p of points) {
      if (p[1] === null || p[1] === undefined || Number.isNaN(p[1])) {
        if (run.length) out.push(run);
        run = [];
      } else run.push(p);
    }
    if (run.length) out.push(run);
    return out;
  }

  // lines: [{label, revision, role, dashed, points: [[ms since epoch, value|null], ...]}]
  // floor: the least top of the y axis (all zeros still get a readable scale).
  function lineChart({ id, title, lines, from, to, format, floor = 1 }) {
    const values = lines.flatMap((l) => l.points.map((p) => p[1])).filter((v) => v !== null && v !== undefined);
    const top = niceMax(Math.max(floor, ...values.map((v) => v * 1.1)));
    const x = (t) => PAD.left + ((t - from) / Math.max(1, to - from)) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
    const grid = [0, 0.5, 1].map((f) => svg("g", { class: "grid" },
      svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(top * f), y2: y(top * f), stroke: "#e3e6ea" }),
      svg("text", { x: PAD.left - 6, y: y(top * f) + 4, "text-anchor": "end", fill: "#667085", "font-size": 10 }, format(top * f)),
    ));
    const minutes = Math.round((to - from) / 60000);
    const axis = [
      svg("text", { x: PAD.left, y: H - 6, fill: "#667085", "font-size": 10 }, `−${minutes} min`),
      svg("text", { x: W - PAD.right, y: H - 6, "text-anchor": "end", fill: "#667085", "font-size": 10 }, "now"),
    ];
    const fallback = palette(lines);
    const stroke = (line, i) => line.colour || fallback[i];
    const drawn = lines.map((line, i) => {
      const colour = stroke(line, i);
      const parts = runs(line.points).map((run) => (run.length === 1
        ? svg("circle", { cx: x(run[0][0]), cy: y(run[0][1]), r: 2.5, fill: colour })
        : svg("polyline", {
          points: run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
          fill: "none", stroke: colour, "stroke-width": line.dashed ? 1.5 : 2,
          "stroke-dasharray": line.dashed ? "4 3" : null, "stroke-linejoin": "round",
        })));
      const known = line.points.filter((p) => p[1] !== null && p[1] !== undefined);
      const last = known[known.length - 1];
      return svg("g", {
        class: "series", "data-revision": line.revision, "data-label": line.label,
        "data-points": known.length,
        "data-last": last ? last[1] : "",
        "data-peak": known.length ? Math.max(...known.map((p) => p[1])) : "",
      }, svg("title", {}, line.label), parts);
    });
    const legend = lines.map((line, i) => (line.unlisted ? null : svg("g", {},
      svg("line", { x1: 0, x2: 14, y1: -4, y2: -4, stroke: stroke(line, i), "stroke-width": 2, "stroke-dasharray": line.dashed ? "4 3" : null }),
      svg("text", { x: 18, y: 0, "font-size": 10, fill: "#1b1f24" }, line.label),
    ))).filter(Boolean);
    let offset = PAD.left;
    for (const item of legend) {
      item.setAttribute("transform", `translate(${offset},28)`);
      offset += 26 + 6 * item.textContent.length;
    }
    return svg("svg", {
      class: "chart", id, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title,
      "data-series": lines.length,
    }, svg("title", {}, title), grid, axis, drawn,
    svg("text", { x: PAD.left, y: 12, "font-size": 11, "font-weight": 600, fill: "#1b1f24" }, title),
    legend);
  }

  // One bar split by share: [{label, role, percent, revision}].
  function shareBar(lanes) {
    const width = 520;
    const fills = palette(lanes);
    let at = 0;
    const parts = lanes.map((lane, i) => {
      const w = (lane.percent / 100) * width;
      const fill = fills[i];
      const g = svg("g", { class: "lane", "data-revision": lane.revision, "data-role": lane.role, "data-percent": lane.percent },
        svg("rect", { x: at, y: 0, width: Math.max(w, 0), height: 26, fill, opacity: lane.role === "shadow" ? 0.45 : 1 }),
        w > 60 ? svg("text", { x: at + 6, y: 17, fill: "#fff", "font-size": 11, "font-weight": 600 }, `${lane.label} ${lane.percent}%`) : null,
        svg("title", {}, `${lane.label}: ${lane.percent}%`));
      at += w;
      return g;
    });
    return svg("svg", { class: "share", viewBox: `0 0 ${width} 26`, role: "img", "aria-label": "traffic shares" },
      svg("rect", { x: 0, y: 0, width, height: 26, fill: "#eceff2" }), parts);
  }

  // The canary's steps as a track: done steps filled, the current one ringed.
  function stepsTrack(steps, current, state) {
    const width = 520;
    const gap = (width - 40) / Math.max(1, steps.length - 1);
    const cx = (i) => 20 + i * gap;
    const done = (i) => i < current || state === "promoted" || (i === current && state !== "waiting");
    const bad = state === "rolled_back" || state === "aborted";
    return svg("svg", { class: "steps", viewBox: `0 0 ${width} 44`, role: "img", "aria-label": "canary steps" },
      svg("line", { x1: cx(0), x2: cx(steps.length - 1), y1: 16, y2: 16, stroke: "#c9ced6", "stroke-width": 3 }),
      steps.map((s, i) => svg("g", { class: "step", "data-step": i, "data-percent": s, "data-current": i === current ? "true" : null },
        svg("circle", {
          cx: cx(i), cy: 16, r: i === current ? 10 : 7,
          fill: done(i) ? (bad && i === current ? "#b42318" : "#e8710a") : "#fff",
          stroke: i === current ? "#1b1f24" : "#c9ced6", "stroke-width": 2,
        }),
        svg("text", { x: cx(i), y: 40, "text-anchor": "middle", "font-size": 11, fill: "#1b1f24" }, `${s}%`))));
  }

  // Side by side bars of a figure, the canary's against its base's; worse is red.
  function compareBars(rows) {
    const width = 520;
    const rowH = 38;
    return svg("svg", { class: "compare", viewBox: `0 0 ${width} ${rows.length * rowH}`, role: "img", "aria-label": "canary against base" },
      rows.map((row, r) => {
        const top = Math.max(row.canary ?? 0, row.base ?? 0, row.limit ?? 0) || 1;
        const scale = (v) => ((v ?? 0) / top) * (width - 230);
        const y0 = r * rowH;
        const worse = row.canary !== null && row.canary !== undefined && row.base !== null && row.base !== undefined
          && row.canary > row.base * 1.1 + 1e-12;
        const over = row.limit !== null && row.limit !== undefined && row.canary !== null && row.canary > row.limit;
        const bar = (v, y, fill, label, which) => svg("g", { class: `bar ${which}`, "data-value": v ?? "" },
          svg("text", { x: 110, y: y + 10, "text-anchor": "end", "font-size": 10, fill: "#667085" }, label),
          svg("rect", { x: 116, y, width: Math.max(scale(v), v ? 1 : 0), height: 12, fill }),
          svg("text", { x: 122 + scale(v), y: y + 10, "font-size": 10, fill: "#1b1f24" }, v === null || v === undefined ? "—" : row.format(v)));
        return svg("g", { class: `figure${worse || over ? " worse" : ""}`, "data-figure": row.key, "data-worse": worse || over ? "true" : "false" },
          svg("text", { x: 0, y: y0 + 20, "font-size": 11, "font-weight": 600, fill: worse || over ? "#b42318" : "#1b1f24" }, row.label),
          bar(row.canary, y0 + 2, worse || over ? "#b42318" : "#e8710a", "canary", "canary"),
          bar(row.base, y0 + 18, "#2557d6", "base", "base"),
          row.limit ? svg("line", { x1: 116 + scale(row.limit), x2: 116 + scale(row.limit), y1: y0, y2: y0 + 32, stroke: "#1b1f24", "stroke-dasharray": "2 2" }) : null,
          row.limit ? svg("title", {}, `limit ${row.format(row.limit)}`) : null);
      }));
  }

  window.mpCharts = { lineChart, shareBar, stepsTrack, compareBars, palette };
})();
