// warden web console: what every page shares. Plain script, no build step.
// Every string from the daemon (guest names, events, log text) reaches the page through
// textContent or a canvas, never innerHTML: guest text is never HTML.
"use strict";

const W = {};

W.me = null;

W.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
};

W.api = async function (path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers["X-Warden-CSRF"] = W.me ? W.me.csrf : "";
    if (opts.body !== undefined && typeof opts.body !== "string") {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.body);
    }
  }
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    location.replace("/login");
    throw new Error("not logged in");
  }
  const type = resp.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) {
    throw new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
  }
  return body;
};

W.guestName = function () {
  const m = location.pathname.match(/^\/guest\/([a-z0-9-]+)/);
  return m ? m[1] : null;
};

W.bytes = function (n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "K", "M", "G", "T"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (v >= 10 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + units[i];
};

W.duration = function (s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
};

W.when = function (t) {
  return new Date(t * 1000).toLocaleString();
};

W.stateBadge = function (state) {
  return W.el("span", { class: `badge ${state}`, text: state });
};

// The bar at the top of every signed-in page.
W.header = async function (here) {
  W.me = await W.api("/api/me");
  const name = W.guestName();
  const links = [W.el("a", { href: "/", text: "Fleet", class: here === "fleet" ? "here" : "" })];
  if (name) {
    links.push(W.el("a", { href: `/guest/${name}`, text: name, class: here === "guest" ? "here" : "" }));
    links.push(W.el("a", { href: `/guest/${name}/logs`, text: "Session logs", class: here === "logs" ? "here" : "" }));
    links.push(W.el("a", { href: `/guest/${name}/timeline`, text: "Timeline", class: here === "timeline" ? "here" : "" }));
  }
  const bar = W.el(
    "header", { class: "top" },
    W.el("span", { class: "brand", text: "warden" }),
    W.el("nav", {}, ...links),
    W.el("span", { class: "who", id: "who", text: W.me.label }),
    W.el("button", { class: "small", id: "logout", text: "Log out", onclick: W.logout }),
  );
  document.body.prepend(bar);
  return W.me;
};

W.logout = async function () {
  try { await W.api("/api/logout", { method: "POST", body: {} }); } catch (e) { /* gone */ }
  location.replace("/login");
};

// A guest's actions, as buttons; `done` runs after each request.
W.actionButtons = function (row, done) {
  const box = W.el("div", { class: "actions" });
  const labels = { start: "Start", stop: "Stop", kill: "Kill", reset: "Reset disk" };
  for (const action of ["start", "stop", "kill", "reset"]) {
    const b = W.el("button", {
      class: "small" + (action === "kill" || action === "reset" ? " danger" : ""),
      text: labels[action],
      "data-action": action,
      disabled: !row.actions.includes(action),
    });
    b.addEventListener("click", async () => {
      if (action === "reset" && !confirm(`Reset ${row.name}'s disk? Everything written to it is lost; it boots from its image again.`)) return;
      if (action === "kill" && !confirm(`Kill ${row.name} at once, without a clean shutdown?`)) return;
      b.disabled = true;
      try {
        await W.api(`/api/guests/${row.name}/${action}`, { method: "POST", body: {} });
      } catch (e) {
        alert(`${row.name}: ${action}: ${e.message}`);
      }
      if (done) done();
    });
    box.append(b);
  }
  return box;
};

// A small line chart of one or two series on a canvas (memory sparklines and histories).
W.chart = function (canvas, series, opts) {
  const o = Object.assign({ max: null, grid: false, labels: false }, opts || {});
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  let max = o.max || 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  if (!max) return;
  const pad = o.labels ? 34 : 2;
  const n = Math.max(...series.map((s) => s.values.length));
  if (o.grid) {
    ctx.strokeStyle = "#e3e7ec";
    ctx.fillStyle = "#5f6b7a";
    ctx.font = "11px system-ui, sans-serif";
    for (let i = 0; i <= 4; i += 1) {
      const y = 4 + (h - 8) * (i / 4);
      ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
      if (o.labels) ctx.fillText(`${Math.round(max * (1 - i / 4))}M`, 0, y + 4);
    }
  }
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      const x = pad + (w - pad - 2) * (n > 1 ? i / (n - 1) : 1);
      const y = 4 + (h - 8) * (1 - v / max);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
  }
};

// The memory history of one guest (the balancer's log: what `warden mem plot` draws).
W.memoryHistory = async function (box, name) {
  const canvas = W.el("canvas", { class: "chart", id: "memory-chart" });
  const legend = W.el(
    "div", { class: "legend" },
    W.el("span", {}, W.el("i", { style: "background:#0b62c4" }), "plugged"),
    W.el("span", {}, W.el("i", { style: "background:#1e7d3a" }), "used"),
  );
  const note = W.el("div", { class: "muted", id: "memory-note" });
  box.append(canvas, legend, note);
  const draw = async () => {
    const data = await W.api(`/api/guests/${name}/memory?since=3600`);
    note.textContent = data.note || (data.t.length
      ? `last hour: ${data.t.length} readings, from ${W.when(data.t[0])}` : "");
    W.chart(canvas, [
      { values: data.plugged, color: "#0b62c4" },
      { values: data.used, color: "#1e7d3a" },
    ], { grid: true, labels: true });
  };
  await draw();
  return draw;
};
