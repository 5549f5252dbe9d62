// A guest's session logs: the list, replay in asciinema-player (the asciicast export of
// `warden logs export`), and a search box that jumps to the moment a string was typed or
// printed (the offsets of `warden logs search`).
"use strict";

const name = W.guestName();
let player = null;
let current = null; // "line/boot" loaded in the player
// Where a hit's moment is shown: just after its last record, so that the screen holds what
// was typed (echoed by the guest a few milliseconds later) or printed.
const AFTER = 0.5;

function seconds(offset) {
  return parseFloat(offset);
}

async function load(line, boot, at) {
  const key = `${line}/${boot}`;
  const box = document.getElementById("player");
  if (current !== key || !player) {
    if (player) player.dispose();
    box.replaceChildren();
    box.classList.remove("seeked");
    document.getElementById("playing").textContent = `${line}, boot ${boot}`;
    player = AsciinemaPlayer.create(
      `/api/guests/${name}/logs/${line}/${boot}/cast`,
      box,
      { fit: "width", terminalFontSize: "14px", preload: true, controls: true },
    );
    current = key;
  }
  if (at !== undefined && at !== null) {
    await player.seek(at);
    box.classList.add("seeked"); // the screen at that moment, not the big play button
  }
  box.dataset.loaded = key;
  box.dataset.at = at === undefined || at === null ? "" : String(at);
}

async function list() {
  const { logs } = await W.api(`/api/guests/${name}/logs`);
  const body = document.querySelector("#logs tbody");
  body.replaceChildren();
  document.getElementById("none").classList.toggle("hidden", logs.length > 0);
  for (const l of logs) {
    const play = W.el("button", { class: "small", text: "Play", "data-log": `${l.line}/${l.boot}` });
    play.addEventListener("click", () => load(l.line, l.boot, null));
    body.append(W.el("tr", {},
      W.el("td", { text: l.line + (l.archived ? " (archived)" : "") }),
      W.el("td", { class: "num", text: String(l.boot) }),
      W.el("td", { text: l.state }),
      W.el("td", { class: "num", text: W.bytes(l.bytes) }),
      W.el("td", { text: W.when(l.modified) }),
      W.el("td", {}, l.archived ? null : play),
    ));
  }
  return logs;
}

async function search(event) {
  event.preventDefault();
  const q = document.getElementById("search").value;
  const box = document.getElementById("hits");
  const st = document.getElementById("search-status");
  if (!q) return;
  st.textContent = "searching…";
  const i = document.getElementById("ignore-case").checked ? "&i=1" : "";
  let hits;
  try {
    ({ hits } = await W.api(`/api/guests/${name}/logs/search?q=${encodeURIComponent(q)}${i}`));
  } catch (e) {
    st.textContent = e.message;
    return;
  }
  st.textContent = hits.length ? `${hits.length} found` : "not found";
  box.replaceChildren();
  box.classList.toggle("hidden", !hits.length);
  hits.forEach((h, n) => {
    const who = h.direction === "typed" && h.user ? ` by ${h.user}` : "";
    const item = W.el("div", { class: "hit", "data-offset": h.end_offset },
      W.el("div", { text: `${new Date(h.time_us / 1000).toLocaleString()} · ${h.line} boot ${h.boot} · ${h.direction}${who} · at ${h.offset}s` }),
      W.el("div", { class: "ctx muted", text: h.context }));
    item.addEventListener("click", () => {
      for (const d of box.children) d.classList.toggle("here", d === item);
      load(h.line, h.boot, seconds(h.end_offset) + AFTER);
    });
    box.append(item);
    if (n === 0) item.click();
  });
}

async function main() {
  await W.header("logs");
  document.getElementById("name").textContent = name;
  document.title = `warden: ${name} logs`;
  document.getElementById("search-form").addEventListener("submit", search);
  if (typeof AsciinemaPlayer === "undefined") {
    document.getElementById("player").textContent =
      "The player (asciinema-player) did not load: run scripts/setup.sh on the host.";
  }
  const logs = await list();
  // /guest/NAME/logs#line=con0&boot=3&at=12.5 (links from the timeline) plays from there.
  const want = new URLSearchParams(location.hash.slice(1));
  if (want.get("line") && want.get("boot")) {
    await load(want.get("line"), want.get("boot"), want.get("at") ? seconds(want.get("at")) : null);
  } else if (logs.length && !logs[0].archived) {
    await load(logs[0].line, logs[0].boot, null);
  }
}

document.addEventListener("DOMContentLoaded", main);
