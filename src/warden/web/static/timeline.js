// A guest's incident timeline (what `warden timeline NAME --json` gives: logins, lines typed,
// execs, flows, files changed, events) and its memory history.
"use strict";

const name = W.guestName();
const SHOWN = ["kind", "time", "time_us", "offset", "replay", "raw"];

function detail(e) {
  return Object.entries(e)
    .filter(([k]) => !SHOWN.includes(k))
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join("  ");
}

async function build() {
  const meta = document.getElementById("meta");
  const body = document.querySelector("#timeline tbody");
  meta.textContent = "building the timeline (the guest's disk is copied while it is paused)…";
  body.replaceChildren();
  let doc;
  try {
    doc = await W.api(`/api/guests/${name}/timeline`);
  } catch (e) {
    meta.textContent = `no timeline: ${e.message}`;
    return;
  }
  const m = doc.meta;
  const counts = Object.entries(m.counts || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  meta.textContent = `${m.scope}: ${m.start || "–"} to ${m.end || "–"} · ${doc.entries.length} entries` +
    (counts ? ` (${counts})` : "");
  for (const e of doc.entries) {
    let replay = null;
    if (e.line && e.boot !== undefined && e.offset) {
      replay = W.el("a", {
        href: `/guest/${name}/logs#line=${encodeURIComponent(e.line)}&boot=${e.boot}&at=${e.offset}`,
        text: "replay",
      });
    }
    body.append(W.el("tr", { "data-kind": e.kind },
      W.el("td", { class: "mono", text: (e.time || "").replace("T", " ").replace("Z", "") }),
      W.el("td", { text: e.kind }),
      W.el("td", { class: "detail", text: detail(e) }),
      W.el("td", {}, replay),
    ));
  }
}

async function main() {
  await W.header("timeline");
  document.getElementById("name").textContent = name;
  document.title = `warden: ${name} timeline`;
  document.getElementById("refresh").addEventListener("click", build);
  await W.memoryHistory(document.getElementById("memory"), name);
  await build();
}

document.addEventListener("DOMContentLoaded", main);
