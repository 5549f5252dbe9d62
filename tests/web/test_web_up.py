"""`make up` prints a login link: `warden up` of a fleet with [web] ends its greeting with a
one-time administrator's link, which logs a browser in (guest-free: the fleet starts none)."""

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.console.test_concentrator import free_port
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.progress import NullProgress


def login(url: str) -> dict[str, str]:
    base, token = url.split("/login#token=", 1)
    req = urllib.request.Request(
        base + "/api/login",
        data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json", "Origin": base},
        method="POST",
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # warden's own certificate, made for this home
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        body: dict[str, str] = json.loads(r.read())
        assert r.headers["Set-Cookie"].startswith("__Host-warden=")
        return body


def test_up_prints_an_administrators_login_link(home: Layout, minimal_image: Path) -> None:
    minimal.build(ImageStore(home), NullProgress())
    port = free_port()
    fleet = home.home / "fleet.toml"
    fleet.write_text(
        f'[web]\nlisten = "127.0.0.1:{port}"\n[[owner]]\nname = "alice"\n'
        '[[machine]]\nname = "web1"\nowner = "alice"\nmemory = "64M"\nautostart = false\n'
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "warden", "up", str(fleet)],
        env={**os.environ, "WARDEN_HOME": str(home.home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    said = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 60
        url = ""
        while not url and time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line, "".join(said)
            said.append(line)
            if "web console: open " in line:
                url = line.split("web console: open ", 1)[1].strip()
        assert url.startswith(f"https://127.0.0.1:{port}/login#token="), "".join(said)
        assert login(url) == {"user": "root", "label": "root (host administrator)"}
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        if up.stdout is not None:
            up.stdout.close()
