// A guest's page: its console and serial lines in xterm.js over a websocket, with the
// concentrator's rules (one writer, spies, a logged takeover), and its memory history.
"use strict";

const name = W.guestName();
let term = null;
let fit = null;
let ws = null;
let line = "con0";
let attachedMode = null;
const encoder = new TextEncoder();

function notice(text, closed) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.classList.toggle("hidden", !text);
  box.classList.toggle("closed", !!closed);
}

function status(text) {
  document.getElementById("status").textContent = text;
}

function wantedMode() {
  return document.getElementById("mode-spy").checked ? "spy" : "rw";
}

function setMode(mode) {
  attachedMode = mode;
  term.options.disableStdin = mode !== "rw";
  document.getElementById(mode === "rw" ? "mode-rw" : "mode-spy").checked = true;
  status(mode === "rw" ? `${line}: you are the writer` : `${line}: watching (spy)`);
  document.getElementById("takeover").classList.toggle("hidden", mode === "rw");
}

// `auto`: the page chose the mode (not the user): a line that has a writer already is then
// watched instead, with the writer named and a button to take over.
function connect(force, auto) {
  if (ws) { ws.onclose = null; ws.onmessage = null; ws.close(); }
  notice("");
  if (auto !== false) document.getElementById("takeover").classList.add("hidden");
  term.reset();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = `mode=${wantedMode()}${force ? "&force=1" : ""}`;
  const sock = new WebSocket(`${scheme}://${location.host}/api/guests/${name}/console/${line}?${query}`);
  sock.binaryType = "arraybuffer";
  ws = sock;
  status("connecting…");
  sock.onmessage = (e) => {
    if (typeof e.data !== "string") {
      term.write(new Uint8Array(e.data));
      return;
    }
    const msg = JSON.parse(e.data);
    if (msg.attached) {
      setMode(msg.attached.mode);
      sendSize();
      if (!msg.attached.running) notice(`${name} is not running: its output appears here when it runs`);
    } else if (msg.mode) {
      if (attachedMode !== null && msg.mode !== attachedMode) setMode(msg.mode);
    } else if (msg.notice) {
      notice(msg.notice);
    } else if (msg.closed) {
      if (msg.conflict && auto) {
        document.getElementById("mode-spy").checked = true;
        connect(false, false);
        notice(`${msg.writer || "someone"} is the writer: you are watching (Take over to type).`);
        document.getElementById("takeover").classList.remove("hidden");
        return;
      }
      notice(msg.closed, true);
      status(`${line}: closed`);
      if (msg.conflict) document.getElementById("takeover").classList.remove("hidden");
    }
  };
  sock.onclose = () => {
    if (ws === sock) status(`${line}: disconnected`);
  };
}

function sendSize() {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ resize: [term.cols, term.rows] }));
  }
}

function send(data) {
  if (ws && ws.readyState === WebSocket.OPEN && attachedMode === "rw") ws.send(data);
}

async function main() {
  await W.header("guest");
  document.title = `warden: ${name}`;
  document.getElementById("name").textContent = name;
  let row = await W.api(`/api/guests/${name}`);
  const showRow = () => {
    document.getElementById("state").replaceChildren(W.stateBadge(row.state));
    document.getElementById("facts").textContent =
      `${row.owner} · ${W.bytes(row.memory)} · ${row.image}` +
      (row.uptime !== null ? ` · up ${W.duration(row.uptime)}` : "") +
      ` · ${row.sessions} attached`;
    const box = document.getElementById("actions");
    if (!box.firstChild) box.append(W.actionButtons(row));
    for (const b of box.querySelectorAll("button")) b.disabled = !row.actions.includes(b.dataset.action);
  };
  showRow();
  const tabs = document.getElementById("lines");
  for (const l of row.lines) {
    tabs.append(W.el("button", {
      text: l,
      "data-line": l,
      class: l === line ? "here" : "",
      onclick: (e) => {
        line = l;
        for (const b of tabs.children) b.classList.toggle("here", b.dataset.line === l);
        document.getElementById("mode-rw").checked = true;
        connect(false, true);
        term.focus();
      },
    }));
  }
  if (typeof Terminal === "undefined") {
    notice("The terminal library (xterm.js) did not load: run scripts/setup.sh on the host.", true);
    return;
  }
  term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace',
    fontSize: 14,
    // OSC 8 hyperlinks in guest output open nothing.
    linkHandler: { activate: () => {}, allowNonHttpProtocols: false },
    theme: { background: "#101418" },
  });
  fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  term.onData((d) => send(encoder.encode(d)));
  term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0))));
  term.onResize(sendSize);
  window.addEventListener("resize", () => fit.fit());
  for (const id of ["mode-rw", "mode-spy"]) {
    document.getElementById(id).addEventListener("change", () => connect(false, false));
  }
  document.getElementById("takeover").addEventListener("click", () => {
    document.getElementById("mode-rw").checked = true;
    connect(true, false);
  });
  if (new URLSearchParams(location.search).get("mode") === "spy") {
    document.getElementById("mode-spy").checked = true;
  }
  connect(false, wantedMode() === "rw");
  term.focus();
  const redraw = await W.memoryHistory(document.getElementById("memory"), name);
  const stream = new EventSource("/api/events");
  stream.addEventListener("fleet", (e) => {
    const mine = JSON.parse(e.data).guests.find((g) => g.name === name);
    if (mine) { row = mine; showRow(); }
  });
  stream.addEventListener("logout", () => { stream.close(); location.replace("/login"); });
  setInterval(redraw, 10000);
}

document.addEventListener("DOMContentLoaded", main);
