"""Keystroke echo through the web console's websocket, in a real browser, against the SSH
concentrator's, side by side in one run (issue 14).

One guest; alice reaches its console two ways, in alternating blocks:
- web: headless Chromium (tests/support/browser.py), logged in with a `warden web link`, opens
  the console's websocket (wss, the daemon's TLS) from the web console's own page and times,
  in the page (performance.now()), one key sent until the guest's echo of it arrives;
- ssh: OpenSSH's `ssh -tt` through the concentrator, timed by this script as
  benchmarks/console.py does (one key written to ssh's stdin until its echo is read back).
Both are a writer attached to the same Line; both keystrokes go to the session log. A
warm-up block of each is not counted. Goal: the browser's median at most 2 ms above SSH's.
"""

import os
import statistics
import sys
import time

from _common import median, result
from console import KEYS, drop, echo_block, scratch, shell, wait_running

# isort: split
from tests.console.test_concentrator import free_port
from tests.support.browser import Browser
from tests.support.ssh_client import SshUser

BLOCKS = int(os.environ.get("WEB_ECHO_BLOCKS", "4"))

# Runs in the page: attach as the writer, wait for the shell, then KEYS single keys, each
# timed until its echo comes back; the samples (ms) go to the callback.
ECHO_JS = """
const [url, keys, done] = arguments;
const enc = new TextEncoder(), dec = new TextDecoder();
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
const samples = [];
let buf = "", wanted = null, t0 = 0, i = 0, phase = "attach";
const finish = (v) => { try { ws.close(); } catch (e) {} done(v); };
function next() {
  if (i >= keys) {
    ws.send(enc.encode("\\x15\\n"));
    setTimeout(() => finish(samples), 200);
    return;
  }
  wanted = i % 2 ? "x" : "y";
  i += 1;
  buf = "";
  t0 = performance.now();
  ws.send(enc.encode(wanted));
}
ws.onerror = () => finish({error: "websocket error"});
ws.onmessage = (e) => {
  if (typeof e.data === "string") {
    const m = JSON.parse(e.data);
    if (m.closed) finish({error: m.closed});
    if (m.attached) {
      phase = "ready";
      setTimeout(() => { buf = ""; ws.send(enc.encode("echo ready-$((1+1))\\n")); }, 300);
    }
    return;
  }
  buf += dec.decode(new Uint8Array(e.data), {stream: true});
  if (phase === "ready" && buf.includes("ready-2")) {
    phase = "drain";
    setTimeout(() => { phase = "keys"; next(); }, 300);
  } else if (phase === "keys" && wanted !== null && buf.includes(wanted)) {
    samples.push(performance.now() - t0);
    wanted = null;
    setTimeout(next, 10);
  }
};
"""


def fleet(ssh_port: int, web_port: int, alice: SshUser) -> str:
    return f"""
[concentrator]
listen = "127.0.0.1:{ssh_port}"
[web]
listen = "127.0.0.1:{web_port}"
[[owner]]
name = "alice"
keys = ["{alice.public}"]
[[machine]]
name = "g0"
owner = "alice"
memory = "64M"
autostart = false
"""


def web_block(b: Browser, web_port: int) -> list[float]:
    url = f"wss://127.0.0.1:{web_port}/api/guests/g0/console/con0?mode=rw"
    got = b.driver.execute_async_script(ECHO_JS, url, KEYS)
    if not isinstance(got, list):
        raise RuntimeError(f"the page's echo loop failed: {got}")
    return [float(x) for x in got]


def main() -> int:
    d, alice = scratch()
    ssh_port, web_port = free_port(), free_port()
    b: Browser | None = None
    try:
        d.apply(fleet(ssh_port, web_port, alice))
        d.cli("start", "g0")
        wait_running(d, ["g0"])
        shell(d, "g0", "echo bo''ot-ok", r"boot-ok")
        b = Browser(alice.dir / "profile")
        b.driver.set_script_timeout(180)
        b.get(d.cli("web", "link", "alice").stdout.strip())
        b.wait(lambda: b.url.endswith(f":{web_port}/"), 30, "logged in")
        ssh_ms: list[float] = []
        web_ms: list[float] = []
        for block in range(-1, BLOCKS):  # block -1 warms both paths up and is not counted
            for path in ("ssh", "web") if block % 2 == 0 else ("web", "ssh"):
                samples = (
                    echo_block(alice.argv(ssh_port, "g0", tty=True), d.env)
                    if path == "ssh"
                    else web_block(b, web_port)
                )
                if block < 0:
                    continue
                (ssh_ms if path == "ssh" else web_ms).extend(samples)
                print(
                    f"  block {block} {path:<4}: median {median(samples):.2f} ms "
                    f"(p90 {sorted(samples)[int(len(samples) * 0.9)]:.2f})",
                    flush=True,
                )
        added = median(web_ms) - median(ssh_ms)
        print(
            f"  web median {median(web_ms):.2f} ms, ssh median {median(ssh_ms):.2f} ms, "
            f"added {added:+.2f} ms (stdev web {statistics.pstdev(web_ms):.2f}, "
            f"ssh {statistics.pstdev(ssh_ms):.2f}); load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        result(
            "keystroke echo via the web console's websocket in Chromium (median)",
            median(web_ms),
            median(ssh_ms),
            "<= +2 ms",
            "ms",
            anchor_name="SSH concentrator",
            ok=added <= 2.0,
        )
    finally:
        if b is not None:
            b.close()
        drop(d, alice)
    return 0


if __name__ == "__main__":
    start = time.monotonic()
    code = main()
    print(f"({time.monotonic() - start:.0f} s)", file=sys.stderr)
    sys.exit(code)
