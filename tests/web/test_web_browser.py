"""The web console's login page in a real browser (Chromium), with no guest running: an owner's
fleet password, a wrong one, logging out, and plain HTTP on loopback (where the cookie is
still Secure: browsers count 127.0.0.1 as a secure origin)."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.test_concentrator import free_port
from tests.support.browser import Browser
from tests.support.daemon import DaemonProc
from tests.web.test_web_server import HASH, PASSWORD


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "profile", tmp_path / "shots")
    try:
        yield b
    finally:
        b.close()


def fleet(port: int, extra: str = "") -> str:
    return f"""
[web]
listen = "127.0.0.1:{port}"
{extra}
[[owner]]
name = "alice"
password_hash = "{HASH}"

[[machine]]
name = "web1"
owner = "alice"
memory = "64M"
autostart = false
"""


def wait_link(d: DaemonProc, *args: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        r = d.cli("web", "link", *args, check=False)
        if r.returncode == 0:
            return r.stdout.strip()
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.2)


def test_an_owner_logs_in_with_her_fleet_password(daemon: DaemonProc, browser: Browser) -> None:
    port = free_port()
    daemon.apply(fleet(port))
    wait_link(daemon, "alice")  # listening
    base = f"https://127.0.0.1:{port}"
    browser.get(base + "/")
    browser.wait(lambda: browser.url == base + "/login", 20, "sent to the login page")
    browser.find("#user").send_keys("alice")
    browser.find("#password").send_keys("wrong")
    browser.find("#login-button").click()
    browser.wait_text("#error", "wrong user name or password")
    browser.screenshot("login")
    browser.find("#password").clear()
    browser.find("#password").send_keys(PASSWORD)
    browser.find("#login-button").click()
    browser.wait(lambda: browser.url == base + "/", 20, "the fleet")
    browser.wait_text("#fleet tbody", "web1")
    assert browser.text("#who") == "alice"
    assert "stopped" in browser.text("#fleet tbody") or "absent" in browser.text("#fleet tbody")
    cookies = {c["name"]: c for c in browser.driver.get_cookies()}
    c = cookies["__Host-warden"]
    assert c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict"
    assert browser.js("return document.cookie") == ""  # HttpOnly: no script reads it
    browser.find("#logout").click()
    browser.wait(lambda: browser.url == base + "/login", 20, "logged out")
    browser.get(base + "/")
    browser.wait(lambda: browser.url == base + "/login", 20, "the session is gone")


def test_plain_http_on_loopback(daemon: DaemonProc, browser: Browser) -> None:
    port = free_port()
    daemon.apply(fleet(port, "insecure_http = true"))
    url = wait_link(daemon, "alice")
    assert url.startswith(f"http://127.0.0.1:{port}/login#token=")
    browser.get(url)
    browser.wait(lambda: browser.url == f"http://127.0.0.1:{port}/", 20, "logged in over HTTP")
    browser.wait_text("#fleet tbody", "web1")
    c = {c["name"]: c for c in browser.driver.get_cookies()}["warden"]
    assert c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict"
