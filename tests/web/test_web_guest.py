"""Issue 14, must-show: the web console in a real browser, on real guests.

A real daemon serves the web console on 127.0.0.1 (HTTPS, its own certificate); headless
Chromium (tests/support/browser.py) logs in through `warden web link` and works the pages as a
user would: her fleet without the other owner's guest, a console she types into and reads the
guest's answer from, a spy who sees her typing, a replay found with the search box, a
honeypot's timeline, and a guest that prints HTML which stays text. Each page is saved as a
screenshot under the test's tmp directory (and copied into $WARDEN_WEB_SHOTS when set: that is
how docs/web/ was made).
"""

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from selenium.common.exceptions import NoAlertPresentException

from tests.conftest import machine_toml
from tests.console.test_concentrator import free_port
from tests.support.browser import Browser
from tests.support.daemon import DaemonProc
from warden.web import assets

pytestmark = pytest.mark.guest


@dataclass
class Env:
    d: DaemonProc
    tmp: Path
    port: int
    browsers: list[Browser] = field(default_factory=list)

    @property
    def shots(self) -> Path:
        return self.tmp / "shots"

    def apply(self, *machines: str) -> None:
        self.d.apply(
            f"""
[web]
listen = "127.0.0.1:{self.port}"

[[owner]]
name = "alice"

[[owner]]
name = "bob"
"""
            + "".join(machines)
        )

    def link(self, *args: str) -> str:
        deadline = time.monotonic() + 30
        while True:  # the listener moves to the new address right after the apply
            r = self.d.cli("web", "link", *args, check=False)
            if r.returncode == 0:
                url = r.stdout.strip()
                assert url.startswith(f"https://127.0.0.1:{self.port}/login#token="), r
                return url
            assert time.monotonic() < deadline, r.stderr
            time.sleep(0.2)

    def browser(self, name: str) -> Browser:
        b = Browser(self.tmp / f"profile-{name}", self.shots)
        self.browsers.append(b)
        return b

    def login(self, name: str, *link_args: str) -> Browser:
        b = self.browser(name)
        b.get(self.link(*link_args))
        b.wait(lambda: b.url == f"https://127.0.0.1:{self.port}/", 30, "the fleet page after login")
        return b

    def page(self, b: Browser, path: str) -> None:
        b.get(f"https://127.0.0.1:{self.port}{path}")


@pytest.fixture
def env(daemon: DaemonProc, tmp_path: Path) -> Iterator[Env]:
    missing = assets.missing(daemon.layout.cache)
    assert not missing, f"web assets missing: {missing}; {assets.SETUP_HINT}"
    e = Env(daemon, tmp_path, free_port())
    try:
        yield e
    finally:
        for b in e.browsers:
            b.close()
        keep = os.environ.get("WARDEN_WEB_SHOTS")
        if keep and e.shots.is_dir():
            Path(keep).mkdir(parents=True, exist_ok=True)
            for png in e.shots.glob("*.png"):
                shutil.copy(png, Path(keep) / png.name)


def wait_running(d: DaemonProc, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while d.ls()[name]["state"] != "running":
        assert time.monotonic() < deadline, d.ls()[name]
        time.sleep(0.2)


def shell_ready(b: Browser) -> None:
    """Type into the page's console until the guest's shell answers there, then clear the
    screen (the kernel's boot messages are the screenshots' least interesting part)."""
    box = b.find("#terminal textarea")
    deadline = time.monotonic() + 90
    n = 0
    while True:
        n += 1
        box.send_keys(f"echo ready-$((1000+{n}))\n")
        try:
            want = f"ready-{1000 + n}"
            b.wait(lambda w=want: w in b.terminal_text(), 3, "the shell's answer")
            break
        except AssertionError:
            assert time.monotonic() < deadline, b.terminal_text()[-500:]
    box.send_keys("clear\n")
    b.wait(lambda: "ready-" not in b.terminal_text(), 10, "a clear screen")


def type_line(b: Browser, text: str) -> None:
    b.find("#terminal textarea").send_keys(text + "\n")


def no_script_ran(b: Browser, title: str) -> None:
    """No alert is open, the title is the page's own, and the DOM holds no script or image
    the guest wrote."""
    with pytest.raises(NoAlertPresentException):
        b.driver.switch_to.alert  # noqa: B018 - raises when there is none
    assert b.js("return document.title") == title
    assert b.js("return document.querySelectorAll('script:not([src])').length") == 0
    assert b.js("return document.querySelectorAll('img').length") == 0
    assert not b.js("return window.pwned === 1")


def test_an_owner_logs_in_types_into_her_console_and_a_spy_watches(env: Env) -> None:
    env.apply(
        machine_toml("web1", "alice", serial_lines=1),
        machine_toml("db1", "bob", autostart=False),
    )
    wait_running(env.d, "web1")
    alice = env.login("alice", "alice")
    # Her fleet: web1, not bob's db1; the row is live (state and memory come in by themselves).
    alice.wait_text("#fleet tbody", "web1")
    rows = [r.get_attribute("data-guest") for r in alice.finds("#fleet tbody tr")]
    assert rows == ["web1"]
    alice.wait(lambda: "running" in alice.text("#fleet tbody tr[data-guest=web1] .state"), 30)
    # used / plugged, once the balancer has read the guest (it may have taken some back)
    nums = re.compile(r"\A\d+(\.\d)?[KMG] / \d+(\.\d)?[KMG]\Z")
    alice.wait(lambda: nums.match(alice.text("#fleet tbody tr[data-guest=web1] .nums")), 30)
    assert "db1" not in alice.driver.page_source
    time.sleep(3)  # a few seconds of the memory sparkline
    alice.screenshot("fleet")
    # bob's guest is exactly a guest that does not exist.
    env.page(alice, "/guest/db1")
    other = (alice.text("h1"), alice.driver.page_source)
    env.page(alice, "/guest/nosuch")
    assert other == (alice.text("h1"), alice.driver.page_source) and other[0] == "No such guest"

    # Her console: she types, the guest answers on the page.
    env.page(alice, "/guest/web1")
    alice.wait(lambda: "you are the writer" in alice.text("#status"), 30, "attached as writer")
    shell_ready(alice)
    type_line(alice, "echo hello-$((6*7))")
    alice.wait(lambda: "hello-42" in alice.terminal_text(), 20, "the guest's answer")

    # An administrator opens the same console: she is the writer, so he watches, and sees
    # what she types as she types it.
    admin = env.login("admin", "--admin")
    env.page(admin, "/guest/web1")
    admin.wait(lambda: "watching" in admin.text("#status"), 30, "attached as spy")
    assert "alice from web:127.0.0.1:" in admin.text("#notice")
    type_line(alice, "echo spy-$((1+2))")
    admin.wait(lambda: "echo spy-$((1+2))" in admin.terminal_text(), 20, "her typing")
    admin.wait(lambda: "spy-3" in admin.terminal_text(), 20, "the guest's answer")
    admin.find("#terminal textarea").send_keys("echo not-from-the-spy\n")
    time.sleep(1)
    assert "not-from-the-spy" not in alice.terminal_text()
    alice.screenshot("guest")
    admin.screenshot("guest-spy")
    alice.wait(lambda: "2 attached" in alice.text("#facts"), 10)

    # The session log has her keystrokes as hers, from the web, like an SSH session's.
    dump = env.d.cli("logs", "dump", "web1", "--json").stdout
    assert '"source": "web:127.0.0.1:' in dump and '"user": "alice"' in dump

    # He takes over: she is told, and becomes a spy.
    admin.find("#takeover").click()
    admin.wait(lambda: "you are the writer" in admin.text("#status"), 20)
    alice.wait(lambda: "watching" in alice.text("#status"), 20, "demoted")
    assert "took over" in alice.text("#notice")


def test_a_replay_is_found_with_the_search_box_and_a_honeypot_has_its_timeline(
    env: Env,
) -> None:
    env.apply(machine_toml("pot", "alice", honeypot=True))
    wait_running(env.d, "pot")
    alice = env.login("alice", "alice")
    env.page(alice, "/guest/pot")
    alice.wait(lambda: "you are the writer" in alice.text("#status"), 30)
    shell_ready(alice)
    type_line(alice, "echo replay-$((40+2))")
    alice.wait(lambda: "replay-42" in alice.terminal_text(), 20)
    for _ in range(15):  # more screens after it: the replay must seek back to find it
        type_line(alice, "echo filler")
    time.sleep(1)

    env.page(alice, "/guest/pot/logs")
    alice.wait_text("#logs tbody", "con0")
    alice.find("#search").send_keys("echo replay-")
    alice.find("#search-button").click()
    alice.wait_text("#search-status", "found")
    hits = alice.text("#hits")
    assert "typed by alice" in hits and "echo replay-$((40+2))" in hits
    # The player jumped to the moment it was typed: the command and its answer are on screen.
    alice.wait(lambda: "replay-42" in alice.player_text(), 20, "the replay at that moment")
    screen = alice.player_text()
    assert "echo replay-$((40+2))" in screen
    at = float(alice.find("#player").get_attribute("data-at") or 0)
    assert at > 0
    time.sleep(1)
    alice.screenshot("logs")

    env.page(alice, "/guest/pot/timeline")
    alice.wait(lambda: "entries" in alice.text("#meta"), 90, "the timeline")
    table = alice.text("#timeline")
    assert "echo replay-$((40+2))" in table
    assert alice.finds("#timeline a[href*='/guest/pot/logs#line=con0']")
    alice.wait(lambda: "readings" in alice.text("#memory-note"), 30, "the memory history")
    alice.screenshot("timeline")

    # The timeline's replay link opens the player at that entry.
    link = alice.finds("#timeline tr[data-kind=input] a")[0]
    assert link.text == "replay"
    link.click()
    alice.wait(lambda: alice.find("#player").get_attribute("data-loaded") == "con0/1", 20)


def test_a_guest_that_prints_html_runs_no_script(env: Env) -> None:
    env.apply(machine_toml("web1", "alice"))
    wait_running(env.d, "web1")
    alice = env.login("alice", "alice")
    env.page(alice, "/guest/web1")
    alice.wait(lambda: "you are the writer" in alice.text("#status"), 30)
    shell_ready(alice)
    title = alice.js("return document.title")
    # Built by the guest's shell, so that what it prints differs from what was typed.
    payload = (
        "printf '%s%s\\n' '<scr''ipt>alert(1)</scr''ipt>' "
        "'<img src=x onerror=\"window.pwned=1;alert(2)\">'"
    )
    type_line(alice, payload)
    alice.wait(lambda: "<script>alert(1)</script>" in alice.terminal_text(), 20, "as text")
    assert '<img src=x onerror="window.pwned=1;alert(2)">' in alice.terminal_text()
    time.sleep(1)
    no_script_ran(alice, title)
    alice.screenshot("hostile-console")

    # The same bytes in the replay, the search results and the timeline: text there too.
    env.page(alice, "/guest/web1/logs")
    alice.wait_text("#logs tbody", "con0")
    alice.find("#search").send_keys("alert(1)")
    alice.find("#search-button").click()
    alice.wait_text("#search-status", "found")
    alice.wait(lambda: "<script>alert(1)</script>" in alice.player_text(), 20, "replayed as text")
    time.sleep(1)
    no_script_ran(alice, "warden: web1 logs")
    env.page(alice, "/guest/web1/timeline")
    alice.wait(lambda: "entries" in alice.text("#meta"), 90)
    no_script_ran(alice, "warden: web1 timeline")
    # The page's own policy refused nothing (a CSP violation would mean a blocked script or
    # style the pages need, or one the guest's bytes slipped in).
    problems = [
        m for m in alice.console_log() if "Content Security Policy" in str(m.get("message"))
    ]
    assert problems == []
