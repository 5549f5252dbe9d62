// The fleet page: every guest the user may see, updated live from /api/events.
"use strict";

const HISTORY = 60; // sparkline points (one a second)
const history = new Map(); // guest -> {used: [], plugged: []}
const rows = new Map(); // guest -> {tr, cells}

function remember(g) {
  let h = history.get(g.name);
  if (!h) { h = { used: [], plugged: [] }; history.set(g.name, h); }
  h.used.push(g.used === null ? null : g.used / 1048576);
  h.plugged.push(g.plugged === null ? null : g.plugged / 1048576);
  if (h.used.length > HISTORY) { h.used.shift(); h.plugged.shift(); }
  return h;
}

function makeRow(g) {
  const cells = {
    state: W.el("td", { class: "state" }),
    nums: W.el("span", { class: "nums" }),
    spark: W.el("canvas", { class: "spark", width: 120, height: 28 }),
    uptime: W.el("td", { class: "num uptime" }),
    sessions: W.el("td", { class: "num sessions" }),
    actions: W.actionButtons(g),
  };
  const name = W.el("td", {},
    W.el("a", { href: `/guest/${g.name}`, text: g.name, class: "guest-link" }),
    g.honeypot ? " " : null,
    g.honeypot ? W.el("span", { class: "badge honeypot", text: "honeypot" }) : null);
  const tr = W.el("tr", { "data-guest": g.name },
    name,
    cells.state,
    W.el("td", {}, W.el("div", { class: "mem" }, cells.nums, cells.spark)),
    cells.uptime,
    W.el("td", { text: g.owner }),
    cells.sessions,
    W.el("td", {}, cells.actions),
  );
  return { tr, cells };
}

function render(guests) {
  const body = document.querySelector("#fleet tbody");
  const seen = new Set();
  for (const g of guests) {
    seen.add(g.name);
    const h = remember(g);
    let row = rows.get(g.name);
    if (!row) {
      row = makeRow(g);
      rows.set(g.name, row);
      body.append(row.tr);
    }
    const c = row.cells;
    if (c.state.textContent !== g.state) c.state.replaceChildren(W.stateBadge(g.state));
    c.nums.textContent = g.plugged === null
      ? `– / ${W.bytes(g.memory)}`
      : `${W.bytes(g.used)} / ${W.bytes(g.plugged)}`;
    c.uptime.textContent = W.duration(g.uptime);
    c.sessions.textContent = String(g.sessions);
    for (const b of c.actions.querySelectorAll("button")) {
      b.disabled = !g.actions.includes(b.dataset.action);
    }
    W.chart(c.spark, [
      { values: h.plugged, color: "#0b62c4" },
      { values: h.used, color: "#1e7d3a" },
    ], { max: g.memory / 1048576 });
  }
  for (const [name, row] of rows) {
    if (!seen.has(name)) { row.tr.remove(); rows.delete(name); history.delete(name); }
  }
  document.getElementById("empty").classList.toggle("hidden", guests.length > 0);
  const running = guests.filter((g) => g.state === "running").length;
  document.getElementById("summary").textContent = `${running} of ${guests.length} running`;
}

function showEvent(ev) {
  const box = document.getElementById("events");
  const none = document.getElementById("no-events");
  if (none) none.remove();
  const rest = Object.entries(ev)
    .filter(([k]) => k !== "machine" && k !== "kind")
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" ");
  const line = `${new Date().toLocaleTimeString()}  ${ev.machine || "warden"}: ${ev.kind} ${rest}`;
  box.prepend(W.el("div", { text: line }));
  while (box.childElementCount > 100) box.lastElementChild.remove();
}

async function main() {
  await W.header("fleet");
  render((await W.api("/api/guests")).guests);
  const stream = new EventSource("/api/events");
  stream.addEventListener("fleet", (e) => render(JSON.parse(e.data).guests));
  stream.addEventListener("event", (e) => showEvent(JSON.parse(e.data)));
  stream.addEventListener("logout", () => { stream.close(); location.replace("/login"); });
}

document.addEventListener("DOMContentLoaded", main);
