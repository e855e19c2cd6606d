// Modelplane dashboard: every read and every button goes through the REST API with the
// API key kept in this browser, so the dashboard can do exactly what that key can do.
(() => {
  "use strict";

  const page = document.body.dataset;
  const API = page.api;
  const UI = page.ui;
  const KEY = "modelplane.apiKey";
  const POLL_MS = 2000;
  const TRAFFIC_POLL_MS = 5000;

  // --- the API ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      const detail = problem && (problem.detail || problem.title);
      super(detail || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  function apiKey() {
    return localStorage.getItem(KEY) || "";
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(API + path, {
        method,
        headers,
        cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, { detail: "the control plane did not answer" });
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const enc = encodeURIComponent;
  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : "";
  };

  function explain(err) {
    if (err.status === 401) {
      return "The control plane wants an API key: paste one in the API key box above.";
    }
    if (err.status === 403) return `This API key may not do that: ${err.message}`;
    return err.message || String(err);
  }

  // --- DOM helpers -----------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
  }

  function fill(id, ...children) {
    const el = document.getElementById(id);
    if (!el) return;
    el.removeAttribute("data-loading");
    el.replaceChildren();
    append(el, children);
  }

  // Re-renders a live section only when its data changed, so buttons and selects inside
  // it are not swapped under the user's pointer every poll.
  const shown = new Map();
  function fillIfChanged(id, data, render) {
    const key = JSON.stringify(data);
    if (shown.get(id) === key) return;
    shown.set(id, key);
    fill(id, render(data));
  }

  function table(headings, rows, empty = "None yet.") {
    if (!rows.length) return h("div", { class: "empty" }, empty);
    const head = h("tr", {}, headings.map((t) => (t.startsWith("#") ? h("th", { class: "num" }, t.slice(1)) : h("th", {}, t))));
    return h("table", {}, h("thead", {}, head), h("tbody", {}, rows));
  }

  const num = (value) => h("td", { class: "num" }, value);
  const link = (path, text) => h("a", { href: UI + path }, text);
  const modelLink = (m) => link(`/models/${enc(m)}`, m);
  const versionLink = (m, v) => link(`/models/${enc(m)}/versions/${v}`, `v${v}`);
  const deploymentLink = (d) => link(`/deployments/${enc(d)}`, d);

  const TONES = {
    ready: "ok", available: "ok", run: "ok",
    pulling: "info", loading: "info", warming: "info", rolling_out: "info",
    pending: "warn", draining: "warn", degraded: "warn", deleting: "warn",
    failed: "bad", unhealthy: "bad",
    running: "info", waiting: "warn", promoted: "ok", rolled_back: "bad", aborted: "bad",
  };
  const pill = (status) => h("span", { class: `pill ${TONES[status] || ""}`, dataset: { status } }, status);

  function ago(iso) {
    const delta = Math.round((Date.now() - Date.parse(iso)) / 1000);
    const seconds = Math.abs(delta);
    let span;
    if (seconds < 3) return "just now";
    if (seconds < 60) span = `${seconds} s`;
    else if (seconds < 3600) span = `${Math.floor(seconds / 60)} min`;
    else if (seconds < 86400) span = `${Math.floor(seconds / 3600)} h`;
    else return new Date(iso).toISOString().slice(0, 16).replace("T", " ");
    return delta < 0 ? `in ${span}` : `${span} ago`;
  }
  const when = (iso) => (iso ? h("time", { datetime: iso, title: iso, dataset: { ago: "" } }, ago(iso)) : "—");

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
  }

  const json = (value) => h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  const compact = (value, max = 60) => {
    if (value === null || value === undefined) return "∅";
    const s = typeof value === "string" ? value : JSON.stringify(value);
    return s.length > max ? `${s.slice(0, max - 1)}…` : s;
  };
  const tags = (t) => Object.entries(t || {}).map(([k, v]) => h("span", { class: "chip" }, v ? `${k}=${v}` : k));
  const firstLine = (s) => (s || "").split("\n")[0].slice(0, 120);

  function summary(pairs, description) {
    return [
      h("dl", {}, pairs.filter(Boolean).map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v === "" || v === null || v === undefined ? "—" : v)))),
      description ? h("p", { class: "description" }, description) : null,
    ];
  }

  function flash(kind, text) {
    const box = document.getElementById("flash");
    const msg = h("div", { class: `msg ${kind}` }, text);
    box.replaceChildren(msg);
    setTimeout(() => msg.remove(), kind === "error" ? 12000 : 6000);
  }

  function live(ok, err) {
    const el = document.getElementById("live");
    el.hidden = false;
    el.classList.toggle("stale", !ok);
    el.textContent = ok ? `● live · ${new Date().toLocaleTimeString()}` : "● stale";
    el.title = ok ? "refreshed every 2 s" : explain(err);
  }

  // Shows a failed read in the sections still waiting for data, or in all of them when
  // the key is the problem (what was shown before may no longer be visible to this key).
  function failed(ids, err) {
    for (const id of ids) {
      const el = document.getElementById(id);
      if (!el) continue;
      if (el.hasAttribute("data-loading") || err.status === 401 || err.status === 403) {
        shown.delete(id);
        fill(id, h("p", { class: "notice error" }, explain(err)));
      }
    }
  }

  // Runs `load` now and every `ms` while the tab is visible, one run at a time.
  function poll(load, ms = POLL_MS) {
    let timer = null;
    let running = false;
    let again = false; // asked to run while running: run once more right after
    const run = async () => {
      clearTimeout(timer);
      if (running) {
        again = true;
        return;
      }
      running = true;
      again = false;
      try {
        if (!document.hidden) {
          await load();
          live(true);
        }
      } catch (err) {
        live(false, err);
      } finally {
        running = false;
        timer = setTimeout(run, again ? 0 : ms);
      }
    };
    document.addEventListener("visibilitychange", () => { if (!document.hidden) run(); });
    run();
    return run;
  }

  // A button that calls the API: confirm, disable while in flight, report, refresh.
  async function act(button, question, call, done) {
    if (question && !window.confirm(question)) return;
    button.disabled = true;
    try {
      const out = await call();
      flash("ok", done(out));
    } catch (err) {
      flash("error", explain(err));
    } finally {
      button.disabled = false;
    }
  }

  // --- shared views ----------------------------------------------------------------

  function deploymentsTable(items) {
    const rows = items.map((d) => h("tr", { dataset: { deployment: d.name } },
      h("td", {}, deploymentLink(d.name)),
      h("td", {}, modelLink(d.model)),
      h("td", {}, d.alias ? [h("span", { class: "chip" }, `@${d.alias}`), " "] : null, d.version ? versionLink(d.model, d.version) : "—"),
      num(d.revision),
      h("td", { class: "status" }, pill(d.status)),
      num(`${d.observed.ready_replicas}/${d.replicas}`),
      h("td", {}, d.observed.version ? `v${d.observed.version}` : "—"),
      h("td", { class: "wrap traffic" }, trafficChips(d)),
      h("td", {}, when(d.updated_at)),
    ));
    return table(["Name", "Model", "Target", "#Revision", "Status", "#Ready", "Serving", "Traffic", "Updated"], rows, "No deployments yet.");
  }

  // A deployment's lanes in a list: shares when more than one revision takes calls, and a
  // canary in progress.
  function trafficChips(d) {
    const lanes = d.lanes || [];
    const canary = d.canary && ["waiting", "running"].includes(d.canary.state) ? d.canary : null;
    if (lanes.length < 2 && !canary) return "—";
    return [
      lanes.map((x) => h("span", { class: `chip${x.role === "shadow" ? " shadow" : ""}`, dataset: { role: x.role } },
        `v${x.version} ${x.percent}%${x.role === "primary" ? "" : ` ${x.role}`}`)),
      canary ? h("span", { class: "pill info", dataset: { canary: canary.state } }, `canary step ${canary.step + 1}/${canary.spec.steps.length}`) : null,
    ];
  }

  function eventsTable(items, short) {
    const rows = items.map((e) => h("tr", { dataset: { event: e.id, action: e.action } },
      h("td", {}, when(e.time)),
      short ? null : h("td", {}, e.actor),
      h("td", {}, h("code", {}, e.action)),
      h("td", {}, e.model ? modelLink(e.model) : "—"),
      h("td", { title: e.target }, e.target ? compact(e.target, short ? 28 : 80) : "—"),
      short ? null : h("td", { class: "mono", title: `${JSON.stringify(e.before)} → ${JSON.stringify(e.after)}` }, `${compact(e.before)} → ${compact(e.after)}`),
      short ? null : h("td", { class: "mono muted" }, e.request_id ? e.request_id.slice(0, 12) : "—"),
    ));
    const headings = short
      ? ["Time", "Action", "Model", "Target"]
      : ["Time", "Actor", "Action", "Model", "Target", "Change", "Request"];
    return table(headings, rows, "No events yet.");
  }

  async function modelRows(models, short) {
    const details = await Promise.all(models.map((m) => Promise.all([
      api(`/models/${enc(m.name)}/versions?limit=100`),
      api(`/models/${enc(m.name)}/aliases?limit=100`),
    ])));
    return models.map((m, i) => {
      const [versions, aliases] = details[i];
      const latest = versions.items[0];
      const count = versions.next_cursor ? `${versions.items.length}+` : versions.items.length;
      return h("tr", { dataset: { model: m.name } },
        h("td", {}, modelLink(m.name)),
        short ? null : h("td", { class: "wrap" }, firstLine(m.description)),
        short ? null : h("td", { class: "wrap" }, tags(m.tags)),
        num(count),
        h("td", {}, latest ? [versionLink(m.name, latest.version), " ", pill(latest.status)] : "—"),
        h("td", { class: "wrap aliases" }, aliases.items.map((a) =>
          h("a", { class: "chip", href: `${UI}/models/${enc(m.name)}/versions/${a.version}`, dataset: { alias: a.alias } },
            h("b", {}, a.alias), ` → v${a.version}`))),
        h("td", {}, when(m.updated_at)),
      );
    });
  }
  const MODEL_HEADINGS = ["Name", "Description", "Tags", "#Versions", "Latest", "Aliases", "Updated"];
  const SHORT_MODEL_HEADINGS = ["Name", "#Versions", "Latest", "Aliases", "Updated"];

  // --- pages -----------------------------------------------------------------------

  const pages = {};

  pages.overview = () => {
    // Each panel on its own: a key may read deployments but not the audit log (admin).
    const panel = (id, path, render) => api(path).then(
      (out) => fillIfChanged(id, out.items, render),
      (err) => { failed([id], err); throw err; },
    );
    poll(async () => {
      const results = await Promise.allSettled([
        panel("deployments", "/deployments?limit=100", deploymentsTable),
        panel("events", "/events?order=desc&limit=15", (items) => eventsTable(items, true)),
      ]);
      const failure = results.find((r) => r.status === "rejected");
      if (failure) throw failure.reason;
    });
    (async () => {
      const models = await api("/models?limit=20");
      fill("models", table(SHORT_MODEL_HEADINGS, await modelRows(models.items, true), "No models yet: push one with `modelplane push`."));
    })().catch((err) => failed(["models"], err));
  };

  pages.models = () => {
    let cursor = null;
    let q = "";
    const more = document.getElementById("models-more");
    const load = async (reset) => {
      const out = await api(`/models${query({ q, limit: 50, cursor: reset ? null : cursor })}`);
      const rows = await modelRows(out.items);
      cursor = out.next_cursor;
      more.hidden = !cursor;
      if (reset) fill("models", table(MODEL_HEADINGS, rows, q ? "No model matches." : "No models yet."));
      else document.querySelector("#models tbody").append(...rows);
    };
    document.getElementById("model-search").addEventListener("submit", (ev) => {
      ev.preventDefault();
      q = document.getElementById("model-q").value.trim();
      load(true).catch((err) => flash("error", explain(err)));
    });
    more.addEventListener("click", () => load(false).catch((err) => flash("error", explain(err))));
    load(true).catch((err) => failed(["models"], err));
  };

  pages.model = () => {
    const m = page.model;
    const base = `/models/${enc(m)}`;
    const load = async () => {
      const [model, versions, aliases] = await Promise.all([
        api(base),
        api(`${base}/versions?limit=200`),
        api(`${base}/aliases?limit=200`),
      ]);
      const histories = await Promise.all(aliases.items.map((a) => api(`${base}/aliases/${enc(a.alias)}/history?limit=20`)));
      const ready = versions.items.filter((v) => v.status === "ready").map((v) => v.version);
      fill("model", summary([
        ["Versions", versions.next_cursor ? `${versions.items.length}+` : versions.items.length],
        ["Aliases", aliases.items.length],
        ["Tags", tags(model.tags)],
        ["Created", when(model.created_at)],
        ["Updated", when(model.updated_at)],
        ["Events", link(`/events${query({ model: m })}`, "audit log")],
      ], model.description));
      fill("aliases", aliasTable(aliases.items, ready));
      const moves = histories.flatMap((page) => page.items).sort((a, b) => Date.parse(b.moved_at) - Date.parse(a.moved_at)).slice(0, 20);
      fill("alias-history", table(["When", "Alias", "From", "To", "Actor"], moves.map((mv) => h("tr", {},
        h("td", {}, when(mv.moved_at)),
        h("td", {}, h("span", { class: "chip" }, mv.alias)),
        h("td", {}, mv.from_version ? versionLink(m, mv.from_version) : "—"),
        h("td", {}, mv.to_version ? versionLink(m, mv.to_version) : "deleted"),
        h("td", {}, mv.actor),
      )), "No alias has moved yet."));
      const pointing = {};
      for (const a of aliases.items) (pointing[a.version] ||= []).push(a.alias);
      fill("versions", table(["#Version", "Status", "Format", "Description", "Aliases", "Created by", "Created"],
        versions.items.map((v) => h("tr", { dataset: { version: v.version } },
          h("td", { class: "num" }, versionLink(m, v.version)),
          h("td", {}, pill(v.status)),
          h("td", {}, v.format || "—"),
          h("td", { class: "wrap" }, firstLine(v.description)),
          h("td", {}, (pointing[v.version] || []).map((a) => h("span", { class: "chip" }, a))),
          h("td", {}, v.created_by),
          h("td", {}, when(v.created_at)),
        )), "No versions yet: push one with `modelplane push`."));
      const form = document.getElementById("alias-new");
      form.hidden = !ready.length;
      document.getElementById("alias-new-version").replaceChildren(...ready.map((v) => h("option", { value: v }, `v${v}`)));
    };

    const versionOptions = (ready, current) => ready.map((v) => h("option", { value: v, selected: v === current }, `v${v}`));

    function aliasTable(items, ready) {
      const rows = items.map((a) => {
        const select = h("select", { class: "target", "aria-label": `version for ${a.alias}` }, versionOptions(ready, a.version));
        const move = h("button", { type: "button", class: "small move" }, "Move");
        move.addEventListener("click", () => {
          const to = Number(select.value);
          if (to === a.version) { flash("error", `${a.alias} already points at v${to}`); return; }
          act(move, `Move ${m}@${a.alias} from v${a.version} to v${to}?`,
            () => api(`${base}/aliases/${enc(a.alias)}`, { method: "PUT", body: { version: to } }),
            (out) => `${out.alias} now points at v${out.version}`).then(refresh);
        });
        const back = h("button", { type: "button", class: "small danger rollback" }, "Roll back");
        back.addEventListener("click", () => act(back, `Roll ${m}@${a.alias} back to the version it pointed at before v${a.version}?`,
          () => api(`${base}/aliases/${enc(a.alias)}/rollback`, { method: "POST" }),
          (out) => `${out.alias} rolled back to v${out.version}`).then(refresh));
        return h("tr", { dataset: { alias: a.alias, version: a.version } },
          h("td", {}, h("span", { class: "chip" }, h("b", {}, a.alias))),
          h("td", { class: "current-version" }, versionLink(m, a.version)),
          h("td", {}, when(a.updated_at)),
          h("td", {}, h("span", { class: "inline" }, select, move)),
          h("td", {}, back),
        );
      });
      return table(["Alias", "Version", "Moved", "Move to", ""], rows, "No aliases yet.");
    }

    document.getElementById("alias-new").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = document.getElementById("alias-new-name").value.trim();
      const to = Number(document.getElementById("alias-new-version").value);
      const button = ev.target.querySelector("button");
      act(button, null, () => api(`${base}/aliases/${enc(name)}`, { method: "PUT", body: { version: to } }),
        (out) => `${out.alias} now points at v${out.version}`).then(refresh);
    });

    const ids = ["model", "aliases", "alias-history", "versions"];
    const refresh = () => load().then(() => live(true)).catch((err) => { failed(ids, err); live(false, err); });
    refresh();
  };

  pages.version = () => {
    const m = page.model;
    const load = async () => {
      const [v, aliases] = await Promise.all([
        api(`/models/${enc(m)}/versions/${enc(page.version)}`),
        api(`/models/${enc(m)}/aliases?limit=200`),
      ]);
      document.getElementById("version-title").textContent = page.version === String(v.version) ? `v${v.version}` : `v${v.version} (${page.version})`;
      document.title = `${m} v${v.version} · Modelplane`;
      const total = v.files.reduce((sum, f) => sum + f.size, 0);
      const pointing = aliases.items.filter((a) => a.version === v.version).map((a) => h("span", { class: "chip" }, a.alias));
      fill("version", summary([
        ["Status", pill(v.status)],
        ["Format", v.format],
        ["Files", `${v.files.length} · ${bytes(total)}`],
        ["Aliases", pointing.length ? pointing : "—"],
        ["Tags", tags(v.tags)],
        ["Created by", v.created_by],
        ["Created", when(v.created_at)],
        ["Updated", when(v.updated_at)],
        ["Source", v.source],
      ], v.description));
      fill("files", table(["Path", "Size", "#Bytes", "SHA-256", "Stored"], v.files.map((f) => h("tr", { dataset: { path: f.path } },
        h("td", { class: "mono" }, f.path),
        h("td", {}, bytes(f.size)),
        num(f.size),
        h("td", {}, h("code", { class: "digest" }, f.sha256)),
        h("td", {}, f.present ? h("span", { class: "pill ok" }, "stored") : h("span", { class: "pill warn" }, "missing")),
      ))));
      fill("metadata", Object.keys(v.metadata || {}).length ? json(v.metadata) : h("div", { class: "empty" }, "No metadata."));
      fill("signature", signature(v.signature));
    };
    load().then(() => live(true)).catch((err) => {
      failed(["version", "files", "metadata", "signature"], err);
      live(false, err);
    });
  };

  function signature(sig) {
    if (!sig) return h("div", { class: "empty" }, "No signature recorded.");
    const io = ["inputs", "outputs"].flatMap((kind) => (Array.isArray(sig[kind]) ? sig[kind].map((t) => [kind, t]) : []));
    if (!io.length) return json(sig);
    return table(["Kind", "Name", "Datatype", "Shape"], io.map(([kind, t]) => h("tr", {},
      h("td", {}, kind.slice(0, -1)),
      h("td", { class: "mono" }, t.name ?? "—"),
      h("td", { class: "mono" }, t.datatype ?? "—"),
      h("td", { class: "mono" }, Array.isArray(t.shape) ? `[${t.shape.join(", ")}]` : "—"),
    )));
  }

  pages.deployments = () => {
    poll(async () => {
      try {
        const out = await api("/deployments?limit=500");
        fillIfChanged("deployments", out.items, deploymentsTable);
      } catch (err) {
        failed(["deployments"], err);
        throw err;
      }
    });
  };

  // --- the prompt box of a language-model deployment ----------------------------------

  const LLM_FORMATS = new Set(["hf_causal_lm"]);

  // The `data` of each server-sent event in `text`; what is left is an unfinished event.
  function sseEvents(text) {
    const events = [];
    const blocks = text.replace(/\r\n/g, "\n").split("\n\n");
    const rest = blocks.pop();
    for (const block of blocks) {
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) events.push(data.join("\n"));
    }
    return { events, rest };
  }

  function openaiError(data, status) {
    const e = data && data.error;
    return (e && (e.message || e)) || (data && data.detail) || `HTTP ${status}`;
  }

  // POST the conversation with `stream: true` to the deployment's stable URL and append
  // each delta to `out` as it arrives (fetch + a ReadableStream reader: no EventSource,
  // which cannot POST or send the key).
  async function streamChat(name, body, out) {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(`/serve/${enc(name)}/v1/chat/completions`, {
      method: "POST", headers, cache: "no-store", body: JSON.stringify({ ...body, stream: true }),
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new Error(openaiError(data, response.status));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const { events, rest } = sseEvents(buffer + decoder.decode(value, { stream: true }));
      buffer = rest;
      for (const data of events) {
        if (data.trim() === "[DONE]") return text;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(openaiError(chunk));
        const delta = (chunk.choices || []).map((c) => (c.delta && c.delta.content) || "").join("");
        text += delta;
        out.append(delta);
      }
    }
    return text;
  }

  function promptBox(name) {
    const panel = document.getElementById("prompt-panel");
    const form = document.getElementById("prompt-form");
    const input = document.getElementById("prompt-text");
    const send = document.getElementById("prompt-send");
    const reply = document.getElementById("prompt-reply");
    let shownFor = null;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const prompt = input.value.trim();
      if (!prompt) return;
      const body = {
        model: shownFor.model,
        messages: [{ role: "user", content: prompt }],
        max_tokens: Number(document.getElementById("prompt-max-tokens").value) || undefined,
        temperature: Number(document.getElementById("prompt-temperature").value),
      };
      send.disabled = true;
      reply.classList.remove("error");
      reply.textContent = "";
      reply.dataset.state = "streaming";
      try {
        await streamChat(name, body, reply);
        reply.dataset.state = "done";
      } catch (err) {
        reply.classList.add("error");
        reply.textContent = err.message || String(err);
        reply.dataset.state = "error";
      } finally {
        send.disabled = false;
      }
    });
    // Shown once the deployment's version is known to be a language model.
    return async (d) => {
      if (shownFor && shownFor.model === d.model && shownFor.version === d.version) return;
      const version = await api(`/models/${enc(d.model)}/versions/${d.version}`);
      shownFor = { model: d.model, version: d.version };
      panel.hidden = !LLM_FORMATS.has(version.format);
      panel.dataset.format = version.format || "";
    };
  }

  // --- traffic, canary and optimisation (the deployment page) ----------------------------

  const given = (v) => v !== null && v !== undefined;
  const percent = (v) => (given(v) ? `${(v * 100).toFixed(v < 0.1 ? 2 : 1)}%` : "—");
  const millis = (v) => (given(v) ? `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms` : "—");
  const perSecond = (v) => (given(v) ? `${v < 10 ? v.toFixed(1) : v.toFixed(0)}/s` : "—");
  const revisionLabel = (r) => `r${r.revision} v${r.version}${r.role ? ` ${r.role}` : ""}`;
  const LIVE_CANARY = new Set(["waiting", "running"]);

  function lanesView(lanes) {
    if (!lanes.length) return h("div", { class: "empty" }, "No revision takes calls yet.");
    const taking = lanes.filter((x) => x.role !== "shadow")
      .map((x) => ({ ...x, label: `v${x.version} ${x.role}` }));
    const shadows = lanes.filter((x) => x.role === "shadow");
    return [
      window.mpCharts.shareBar(taking),
      h("p", { class: "lanes-legend" }, taking.map((x) => h("span", { class: "chip", dataset: { lane: x.revision, role: x.role } },
        h("b", {}, `${x.percent}%`), ` r${x.revision} · v${x.version} · ${x.role}`)),
      shadows.map((x) => h("span", { class: "chip shadow", dataset: { lane: x.revision, role: x.role } },
        h("b", {}, `${x.percent}% mirrored`), ` to r${x.revision} · v${x.version} (answers dropped)`))),
    ];
  }

  function trafficView(series) {
    const charts = window.mpCharts;
    const revisions = series.revisions;
    if (!revisions.length) return h("div", { class: "empty" }, "No calls counted in the last 15 minutes.");
    const to = Date.now();
    const from = Math.min(Date.parse(series.since), to - 60000);
    const colours = charts.palette(revisions);
    const line = (r, i, key, extra) => ({
      label: revisionLabel(r), revision: r.revision, role: r.role,
      colour: colours[i], points: r.points.map((pt) => [Date.parse(pt.t), pt[key]]), ...extra,
    });
    const chart = (id, title, key, format, floor) => charts.lineChart({
      id, title, from, to, format, floor, lines: revisions.map((r, i) => line(r, i, key)),
    });
    const shadows = revisions.filter((r) => r.shadow_calls || r.shadow_dropped);
    return [
      h("div", { class: "chart-grid" },
        chart("chart-calls", "calls/s", "calls_per_s", perSecond, 1),
        chart("chart-errors", "error rate", "error_rate", percent, 0.01),
        charts.lineChart({
          id: "chart-latency", title: "latency: p99 solid, p50 dashed", from, to, format: millis,
          lines: revisions.flatMap((r, i) => [
            line(r, i, "p99_ms", { label: `${revisionLabel(r)} p99` }),
            line(r, i, "p50_ms", { label: `${revisionLabel(r)} p50`, dashed: true, unlisted: true }),
          ]),
        })),
      shadows.map((r) => h("p", { class: "muted shadow-figures", dataset: { revision: r.revision } },
        `shadow r${r.revision} (v${r.version}): ${r.shadow_calls} mirrored calls, ${r.shadow_errors} errors, `,
        `${r.shadow_disagreements} disagreements with the primary, ${r.shadow_dropped} dropped (queue full)`)),
    ];
  }

  function canaryView(c) {
    const spec = c.spec;
    const mine = c.figures || {};
    const base = c.base_figures || {};
    const thresholds = [`errors ≤ ${percent(spec.max_error_rate)}`, spec.max_p99_ms ? `p99 ≤ ${millis(spec.max_p99_ms)}` : null,
      `≥ ${spec.min_calls} calls a step`, `every ${spec.interval_s} s`].filter(Boolean).join(" · ");
    return [
      summary([
        ["State", h("span", { id: "canary-state" }, pill(c.state))],
        ["Step", h("span", { id: "canary-step" }, `${c.step + 1} of ${spec.steps.length} (${spec.steps[c.step]}%)`)],
        ["Share now", h("span", { id: "canary-share" }, `${c.percent}%`)],
        ["Canary", `r${c.revision} · v${c.version}`],
        ["Base", `r${c.base_revision} · v${c.base_version}`],
        ["Started", when(c.started_at)],
        ["Step started", c.step_started_at ? when(c.step_started_at) : "—"],
        ["Gate", thresholds],
      ]),
      window.mpCharts.stepsTrack(spec.steps, c.step, c.state),
      c.figures || c.base_figures
        ? window.mpCharts.compareBars([
          { key: "error_rate", label: "error rate", canary: mine.error_rate, base: base.error_rate, limit: spec.max_error_rate, format: percent },
          { key: "p99_ms", label: "p99", canary: mine.p99_ms, base: base.p99_ms, limit: spec.max_p99_ms, format: millis },
          { key: "p50_ms", label: "p50", canary: mine.p50_ms, base: base.p50_ms, format: millis },
          { key: "calls", label: "calls", canary: mine.calls, base: base.calls, format: (v) => String(v) },
        ])
        : h("p", { class: "muted" }, LIVE_CANARY.has(c.state)
          ? `No verdict yet: each step needs ${spec.min_calls} calls of the canary.`
          : "No figures: it ended before a verdict on its counts."),
      h("p", { id: "canary-verdict", class: `verdict ${TONES[c.state] || ""}` },
        c.reason ? `${c.state.replace("_", " ")}: ${c.reason}` : `${c.state}: no verdict yet`),
    ];
  }

  function verdictCell(v) {
    if (!v) return "—";
    const state = v.state || v.outcome || "verdict";
    return h("span", { title: v.reason || "" }, pill(state), v.reason ? ` ${compact(v.reason, 48)}` : "");
  }

  function optimisationCell(o) {
    if (!o) return "—";
    const mode = o.applied === o.requested ? o.applied : `${o.requested} → ${o.applied}`;
    const ratio = (a, b) => (a && b ? ` (×${(b / a).toFixed(2)})` : "");
    const accuracy = [
      given(o.max_abs_error) ? `abs err ${o.max_abs_error.toPrecision(2)}` : null,
      given(o.max_rel_error) ? `rel err ${o.max_rel_error.toPrecision(2)}` : null,
      given(o.top1_agreement) ? `top-1 ${percent(o.top1_agreement)}` : null,
    ].filter(Boolean).join(", ");
    return h("span", { class: "optimisation", title: o.reason || "" },
      h("span", { class: "chip" }, mode), " ",
      given(o.size_bytes_before) && given(o.size_bytes_after)
        ? h("span", { class: "chip" }, `${bytes(o.size_bytes_before)} → ${bytes(o.size_bytes_after)}${ratio(o.size_bytes_before, o.size_bytes_after)}`) : null,
      given(o.latency_ms_before) && given(o.latency_ms_after)
        ? h("span", { class: "chip" }, `${millis(o.latency_ms_before)} → ${millis(o.latency_ms_after)}${ratio(o.latency_ms_before, o.latency_ms_after)}`) : null,
      accuracy ? h("span", { class: "chip" }, accuracy) : null,
      o.unchecked ? h("span", { class: "pill warn" }, "unchecked") : h("span", { class: `pill ${o.passed ? "ok" : "bad"}` }, o.passed ? "passed" : "failed"));
  }

  pages.deployment = () => {
    const name = page.deployment;
    const base = `/deployments/${enc(name)}`;
    const button = document.getElementById("rollback-deployment");
    const showPrompt = promptBox(name);
    let current = null;
    const ids = ["deployment", "replicas", "endpoints", "revisions"];
    const canaryPanel = document.getElementById("canary-panel");
    const promote = document.getElementById("canary-promote");
    const abort = document.getElementById("canary-abort");

    const refresh = poll(async () => {
      let d, endpoints, revisions;
      try {
        [d, endpoints, revisions] = await Promise.all([
          api(base), api(`${base}/endpoints`), api(`${base}/revisions?limit=100`),
        ]);
      } catch (err) {
        failed(ids, err);
        throw err;
      }
      current = d;
      showPrompt(d).catch(() => {}); // a version it cannot read: no box, the rest still shows
      canaryPanel.hidden = !d.canary;
      const open = Boolean(d.canary && LIVE_CANARY.has(d.canary.state));
      promote.disabled = !open;
      abort.disabled = !open;
      if (d.canary) fillIfChanged("canary", d.canary, canaryView);
      fillIfChanged("lanes", d.lanes || [], lanesView);
      button.disabled = revisions.items.length < 2;
      document.getElementById("deployment-status").replaceChildren(pill(d.status));
      const { observed, ...desired } = d;
      fillIfChanged("deployment", desired, () => summary([
        ["Model", modelLink(d.model)],
        ["Target", d.alias ? `@${d.alias} → v${d.version}` : `v${d.version}`],
        ["Revision", d.revision],
        ["Replicas", `${d.replicas} × ${d.gpus ? `${d.gpus} GPU` : "CPU"}`],
        ["Device", d.device],
        ["Batching", `≤ ${d.batching.max_batch_size} · ${d.batching.max_delay_ms} ms`],
        ["Pickle allowed", d.allow_pickle ? "yes" : "no"],
        ["Created", when(d.created_at)],
        ["Updated", when(d.updated_at)],
        d.status_reason ? ["Why", d.status_reason] : null,
      ]));
      fillIfChanged("replicas", observed, () => [
        h("p", { class: "muted" }, `${observed.ready_replicas} of ${d.replicas} ready; serving ${observed.version ? `v${observed.version}` : "nothing yet"}.`),
        table(["#Revision", "#Index", "Version", "Desired", "State", "Worker", "GPUs", "#Restarts", "Lease expires", "Reason"],
          observed.replicas.map((r) => h("tr", { dataset: { replica: r.id, state: r.state } },
            num(r.revision), num(r.index), h("td", {}, versionLink(d.model, r.version)),
            h("td", {}, r.desired), h("td", { class: "state" }, pill(r.state)),
            h("td", { class: "mono" }, r.worker || "—"), h("td", {}, r.gpu_ids.length ? r.gpu_ids.join(",") : "—"),
            num(r.restarts), h("td", {}, r.lease_expires_at ? when(r.lease_expires_at) : "—"),
            h("td", { class: "wrap" }, r.reason || ""),
          )), "No replicas."),
      ]);
      fillIfChanged("endpoints", endpoints.items, (items) => table(
        ["Endpoint", "URL", "Status", "#Revision", "Version", "Worker", "Heartbeat", "Reason"],
        items.map((e) => h("tr", { dataset: { endpoint: e.id, status: e.status } },
          h("td", { class: "mono", title: e.id }, e.id.slice(0, 8)),
          h("td", { class: "mono" }, e.url),
          h("td", { class: "status" }, pill(e.status)),
          num(e.revision), h("td", {}, versionLink(d.model, e.version)),
          h("td", { class: "mono" }, e.worker || "—"), h("td", {}, when(e.heartbeat_at)),
          h("td", { class: "wrap" }, e.reason || ""),
        )), "No endpoint registered yet: a deployer worker starts serving processes for the replicas."));
      fillIfChanged("revisions", { items: revisions.items, current: d.revision }, () => table(
        ["#Revision", "Version", "Reason", "Replicas", "Device", "Optimisation", "Verdict", "Created", ""],
        revisions.items.map((r) => {
          const isCurrent = r.revision === d.revision;
          const to = h("button", { type: "button", class: "small danger rollback-to" }, "Roll back to this");
          to.addEventListener("click", () => act(to, `Roll ${name} back to revision ${r.revision} (v${r.version})?`,
            () => api(`${base}/rollback`, { method: "POST", body: { to_revision: r.revision } }),
            (out) => `${out.name}: revision ${out.revision} deploys v${out.version}`).then(refresh));
          return h("tr", { class: isCurrent ? "current" : null, dataset: { revision: r.revision } },
            num(r.revision), h("td", {}, versionLink(d.model, r.version)),
            h("td", {}, r.reason), num(r.settings.replicas ?? "—"),
            h("td", {}, r.settings.device ?? "—"),
            h("td", { class: "optimisation-cell wrap" }, optimisationCell(r.optimization)),
            h("td", { class: "verdict-cell wrap" }, verdictCell(r.verdict)),
            h("td", {}, when(r.created_at)),
            h("td", {}, isCurrent ? h("span", { class: "pill info" }, "current") : to),
          );
        })));
    });

    const refreshTraffic = poll(async () => {
      try {
        const series = await api(`${base}/traffic?minutes=15&bucket_s=10`);
        fill("traffic", trafficView(series));
      } catch (err) {
        failed(["traffic"], err);
        throw err;
      }
    }, TRAFFIC_POLL_MS);
    const canaryAction = (which, question, done) => () => act(which === "promote" ? promote : abort, question(current.canary),
      () => api(`${base}/canary/${which}`, { method: "POST" }), done)
      .then(() => { refresh(); refreshTraffic(); });
    promote.addEventListener("click", canaryAction("promote",
      (c) => `Give v${c.version} (revision ${c.revision}) all of ${name}'s traffic now?`,
      (out) => `${out.name}: canary promoted, v${out.version} takes all calls`));
    abort.addEventListener("click", canaryAction("abort",
      (c) => `Stop the canary of v${c.version} and send all of ${name}'s traffic back to v${c.base_version}?`,
      (out) => `${out.name}: canary aborted, v${out.version} takes all calls`));

    button.addEventListener("click", () => {
      const revision = current ? current.revision : "?";
      act(button, `Roll ${name} back to the revision before ${revision}?`,
        () => api(`${base}/rollback`, { method: "POST", body: {} }),
        (out) => `${out.name}: revision ${out.revision} deploys v${out.version}`).then(refresh);
    });
  };

  pages.events = () => {
    const params = new URLSearchParams(window.location.search);
    const modelInput = document.getElementById("event-model");
    const actionInput = document.getElementById("event-action");
    modelInput.value = params.get("model") || "";
    actionInput.value = params.get("action") || "";
    const more = document.getElementById("events-more");
    const filters = () => ({ model: modelInput.value.trim(), action: actionInput.value.trim() });
    // What is shown: the submitted filters and every event loaded under them, by id (new
    // ones come in on top). A filter change starts a new view; answers for an old one are
    // dropped.
    const newView = () => ({ filters: filters(), loaded: new Map(), cursor: undefined });
    let view = newView();
    const render = () => {
      const items = [...view.loaded.values()].sort((a, b) => b.id - a.id);
      fillIfChanged("events", items, (all) => eventsTable(all, false));
      more.hidden = !view.cursor;
    };
    const fetchInto = async (v, cursor) => {
      const out = await api(`/events${query({ ...v.filters, order: "desc", limit: 100, cursor })}`);
      if (v !== view) return;
      for (const e of out.items) v.loaded.set(e.id, e);
      if (cursor || v.cursor === undefined) v.cursor = out.next_cursor;
      render();
    };
    const refresh = poll(async () => {
      try {
        await fetchInto(view, null);
      } catch (err) {
        failed(["events"], err);
        throw err;
      }
    }, 3000);
    more.addEventListener("click", () => fetchInto(view, view.cursor).catch((err) => flash("error", explain(err))));
    document.getElementById("event-filter").addEventListener("submit", (ev) => {
      ev.preventDefault();
      view = newView();
      shown.delete("events");
      document.getElementById("events").setAttribute("data-loading", ""); // errors show here
      window.history.replaceState(null, "", window.location.pathname + query(view.filters));
      refresh();
    });
  };

  // --- the API key box -------------------------------------------------------------

  function keyBox() {
    const state = document.getElementById("key-state");
    state.textContent = apiKey() ? "key saved" : "no key";
    document.getElementById("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = document.getElementById("api-key");
      const key = input.value.trim();
      if (!key) return;
      localStorage.setItem(KEY, key);
      window.location.reload();
    });
    document.getElementById("key-clear").addEventListener("click", () => {
      localStorage.removeItem(KEY);
      window.location.reload();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    keyBox();
    setInterval(() => {
      for (const t of document.querySelectorAll("time[data-ago]")) t.textContent = ago(t.getAttribute("datetime"));
    }, 1000);
    if (pages[page.page]) pages[page.page]();
  });
})();
