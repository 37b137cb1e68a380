// galley dashboard: runs, instances and live sessions. Served by `galley dashboard` (embedded in
// the binary); talks only to the server it came from. Text goes in with textContent; the one
// piece of HTML (a tmux screen) is built and escaped by the server.
"use strict";

const state = { csrf: "", readOnly: true, providers: [], runs: [], instances: [], timer: null, source: null };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.appendChild(typeof k === "string" || typeof k === "number" ? document.createTextNode(String(k)) : k);
  }
  return e;
}

function status(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = "status" + (bad ? " err" : "");
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (!r.ok) throw new Error((await r.text()) || r.status);
  return r.json();
}

async function post(path, body, question) {
  if (state.readOnly) return false;
  if (question && !window.confirm(question)) return false;
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
    body: JSON.stringify(body),
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) { status(`${path}: ${(j.error && j.error.code) || r.status}`, true); return false; }
  status(`${path.split("/").slice(-2).join(" ")}: done`);
  return true;
}

function duration(s) {
  if (s === undefined || s === null) return "-";
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h" + (Math.floor(s / 60) % 60 ? Math.floor(s / 60) % 60 + "m" : "");
  return Math.floor(s / 86400) + "d";
}

function bytes(n) {
  if (n === undefined || n === null) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function bar(pct) {
  if (pct === undefined || pct === null) return el("span", { class: "muted" }, "-");
  return el("span", {}, el("span", { class: "bar" }, el("span", { style: `width:${Math.min(100, pct)}%` })),
    ` ${pct.toFixed(1)}%`);
}

function clear() {
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  if (state.source) { state.source.close(); state.source = null; }
  const m = document.getElementById("main");
  m.textContent = "";
  return m;
}

// --- the overview: runs and instances -------------------------------------------------------

function runsTable() {
  const byRun = {};
  for (const p of state.instances) for (const i of p.instances || []) {
    if (i.run) (byRun[i.run] = byRun[i.run] || []).push(i);
  }
  const rows = state.runs.slice();
  const known = new Set(rows.map((r) => r.id));
  for (const [id, list] of Object.entries(byRun)) {
    if (!known.has(id)) rows.push({ id, recipe: list[0].recipe, state: "finished", kept: list.filter((i) => i.kept).length });
  }
  if (!rows.length) return el("p", { class: "muted", id: "runs" }, "No runs recorded.");
  const outcome = (r) => {
    if (r.state === "running") return "-";
    const parts = [];
    if (r.cleanup) parts.push(`cleanup ${r.cleanup}`);
    if (r.stopped) parts.push(`cleaned up ${r.stopped}`);
    if (r.kept) parts.push(`kept ${r.kept}`);
    if (r.leaks) parts.push(`LEAKED ${r.leaks}`);
    return parts.join(", ") || "nothing left";
  };
  return el("table", { id: "runs" },
    el("tr", {}, ["RUN", "RECIPE", "STARTED", "STATE", "EXIT", "INSTANCES", "CLEAN-UP"].map((h) => el("th", {}, h))),
    rows.map((r) => el("tr", { "data-run": r.id },
      el("td", {}, r.id), el("td", {}, r.recipe || "-"),
      el("td", {}, r.started ? new Date(r.started * 1000).toLocaleString() : "-"),
      el("td", { class: r.state === "running" ? "ok" : (r.state === "dead" ? "err" : "muted") }, r.state),
      el("td", { class: "num" + (r.exit_code ? " err" : "") }, r.exit_code === undefined ? "-" : String(r.exit_code)),
      el("td", { class: "num" }, String((byRun[r.id] || []).length)),
      el("td", { class: r.leaks || r.cleanup ? "err" : "" }, outcome(r)))));
}

function instanceRow(provider, i) {
  const h = i.health || {};
  const age = i.created_at ? Date.now() / 1000 - i.created_at : null;
  const actions = el("td", {},
    el("a", { href: `#/instance/${encodeURIComponent(provider)}/${encodeURIComponent(i.id)}` }, "sessions"));
  if (!state.readOnly) {
    actions.append(" ", el("button", { class: "danger stop", onclick: async () => {
      if (await post("/api/instance/stop", { provider, id: i.id }, `Stop instance ${i.id}? Its processes end.`)) {
        refreshOverview();
      }
    } }, "stop"));
  }
  return el("tr", { "data-instance": i.id, "data-provider": provider },
    el("td", {}, i.id), el("td", { class: i.status === "ready" ? "ok" : "muted" }, i.status || "?"),
    el("td", { class: "num" }, duration(age)), el("td", { class: "num" }, duration(i.ttl_left)),
    el("td", {}, i.run || "-"), el("td", {}, (i.recipe || "-") + (i.kept ? " (kept)" : "")),
    el("td", { class: "health cpu" }, h.error ? el("span", { class: "err" }, h.error.code) : bar(h.cpu_percent)),
    el("td", { class: "health mem" }, bar(h.mem_percent)),
    el("td", { class: "health disk" }, bar(h.disk_percent)),
    el("td", { class: "num health load" }, h.load && h.load.length ? h.load.map((x) => x.toFixed(2)).join(" ") : "-"),
    el("td", { class: "num health uptime" }, duration(h.uptime_seconds)),
    actions);
}

function instancesSection() {
  const out = [];
  for (const p of state.instances) {
    out.push(el("h2", {}, `Instances on ${p.provider}`));
    if (p.error) { out.push(el("p", { class: "err" }, `${p.error.code}: ${p.error.message || ""}`)); continue; }
    if (!p.instances.length) { out.push(el("p", { class: "muted" }, "No instances.")); continue; }
    out.push(el("table", { class: "instances", "data-provider": p.provider },
      el("tr", {}, ["ID", "STATUS", "AGE", "TTL LEFT", "RUN", "RECIPE", "CPU", "MEMORY", "DISK", "LOAD", "UPTIME", ""]
        .map((h) => el("th", {}, h))),
      p.instances.map((i) => instanceRow(p.provider, i))));
  }
  return out;
}

async function refreshOverview() {
  try {
    const [s, inst] = await Promise.all([api("/api/state"), api("/api/instances")]);
    Object.assign(state, { runs: s.runs, instances: inst });
    if (location.hash && location.hash !== "#/") return;
    const m = document.getElementById("main");
    m.textContent = "";
    m.append(el("h2", {}, "Runs"), runsTable(), ...instancesSection());
    status("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    status("cannot load: " + e.message, true);
  }
}

function overview() {
  clear();
  refreshOverview();
  state.timer = setInterval(refreshOverview, 5000);
}

// --- one instance: its sessions --------------------------------------------------------------

async function instancePage(provider, id) {
  const m = clear();
  m.append(el("p", {}, el("a", { href: "#/" }, "← all instances")), el("h2", {}, `Sessions on ${id}`),
    el("div", { id: "sessions" }, el("p", { class: "muted" }, "Loading…")));
  const load = async () => {
    let s;
    try { s = await api(`/api/sessions?provider=${encodeURIComponent(provider)}&id=${encodeURIComponent(id)}`); }
    catch (e) { status("cannot load sessions: " + e.message, true); return; }
    const base = `#/session/${encodeURIComponent(provider)}/${encodeURIComponent(id)}`;
    const rows = [];
    for (const p of s.pm2) rows.push(el("tr", { "data-session": p.name, "data-manager": "pm2" },
      el("td", {}, el("a", { href: `${base}/pm2/${encodeURIComponent(p.name)}` }, p.name)), el("td", {}, "pm2"),
      el("td", {}, p.status), el("td", { class: "num" }, String(p.restarts ?? "-")),
      el("td", { class: "num" }, duration(p.uptime_ms !== undefined ? p.uptime_ms / 1000 : null))));
    for (const t of s.tmux) rows.push(el("tr", { "data-session": t.name, "data-manager": "tmux" },
      el("td", {}, el("a", { href: `${base}/tmux/${encodeURIComponent(t.name)}` }, t.name)), el("td", {}, "tmux"),
      el("td", {}, t.status), el("td", { class: "num" }, "-"),
      el("td", { class: "num" }, duration(t.created_at ? Date.now() / 1000 - t.created_at : null))));
    const box = document.getElementById("sessions");
    if (!box) return;
    box.textContent = "";
    if (s.pm2_error) box.append(el("p", { class: "muted" }, `PM2: ${s.pm2_error.code}`));
    if (s.tmux_error) box.append(el("p", { class: "muted" }, `tmux: ${s.tmux_error.code}`));
    box.append(rows.length ? el("table", {}, el("tr", {}, ["NAME", "MANAGER", "STATUS", "RESTARTS", "UPTIME"]
      .map((h) => el("th", {}, h))), rows) : el("p", { class: "muted" }, "No PM2 processes or tmux sessions."));
  };
  await load();
  state.timer = setInterval(load, 5000);
}

// --- one session: live log (PM2) or screen and keys (tmux) -----------------------------------

function sessionPage(provider, id, manager, name) {
  const m = clear();
  const q = `provider=${encodeURIComponent(provider)}&id=${encodeURIComponent(id)}&name=${encodeURIComponent(name)}`;
  const back = `#/instance/${encodeURIComponent(provider)}/${encodeURIComponent(id)}`;
  const body = { provider, id, name, manager };
  const actions = el("p", {}, el("a", { href: back }, `← sessions on ${id}`));
  if (!state.readOnly) {
    actions.append(" ", el("button", { class: "danger", id: "stop-session",
      onclick: () => post("/api/session/stop", body, `Stop ${manager} session ${name} on ${id}?`) }, "stop"));
    if (manager === "pm2") {
      actions.append(" ", el("button", { id: "restart-session",
        onclick: () => post("/api/session/restart", body, `Restart ${name} on ${id}?`) }, "restart"));
    }
  }
  m.append(actions, el("h2", {}, `${name} (${manager}) on ${id}`));
  if (manager === "pm2") {
    const pre = el("pre", { class: "term log", id: "log" });
    m.append(pre);
    // The last event id ("<out offset>.<err offset>") survives a reload or a dashboard restart.
    const key = `galley-log:${provider}/${id}/${name}`;
    const from = sessionStorage.getItem(key);
    const src = new EventSource(`/api/log?${q}${from ? "&from=" + encodeURIComponent(from) : ""}`);
    state.source = src;
    src.addEventListener("hello", () => status("following " + name));
    src.addEventListener("log", (ev) => {
      const d = JSON.parse(ev.data);
      const near = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 80; // follow unless scrolled up
      if (d.reset) pre.append(el("span", { class: "muted" }, "--- log restarted ---\n"));
      if (d.out) pre.append(document.createTextNode(d.out));
      if (d.err) pre.append(el("span", { class: "e" }, d.err));
      if (ev.lastEventId) sessionStorage.setItem(key, ev.lastEventId);
      if (near) pre.scrollTop = pre.scrollHeight;
    });
    src.addEventListener("error", () => status("log stream interrupted; reconnecting", true));
  } else {
    const pre = el("pre", { class: "term screen", id: "screen" });
    m.append(pre);
    const src = new EventSource(`/api/screen?${q}`);
    state.source = src;
    src.addEventListener("screen", (ev) => { pre.innerHTML = JSON.parse(ev.data).html; });
    src.addEventListener("error", () => status("screen stream interrupted; reconnecting", true));
    if (!state.readOnly) {
      const input = el("input", { type: "text", id: "keys", placeholder: "text to type", autocomplete: "off" });
      const enter = el("input", { type: "checkbox", id: "enter", checked: true });
      const form = el("form", { class: "keys", id: "keys-form" }, input, el("label", {}, enter, " Enter"),
        el("button", { type: "submit" }, "send"));
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const text = input.value;
        if (await post("/api/session/keys", { ...body, text, enter: enter.checked },
          `Type ${JSON.stringify(text)}${enter.checked ? " and Enter" : ""} into ${name}?`)) input.value = "";
      });
      m.append(form);
    }
  }
}

function route() {
  const parts = (location.hash || "#/").slice(2).split("/").map(decodeURIComponent);
  if (parts[0] === "instance" && parts.length === 3) return instancePage(parts[1], parts[2]);
  if (parts[0] === "session" && parts.length === 5) return sessionPage(parts[1], parts[2], parts[3], parts[4]);
  return overview();
}

async function start() {
  try {
    const s = await api("/api/state");
    Object.assign(state, { csrf: s.csrf, readOnly: s.read_only, providers: s.providers, runs: s.runs });
    document.getElementById("mode").hidden = !s.read_only;
  } catch (e) {
    status("not signed in: open the URL `galley dashboard` printed", true);
    return;
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
