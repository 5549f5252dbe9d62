"""A real browser for the web console's tests and benchmarks: Debian's headless Chromium,
driven by Selenium through Debian's chromedriver (scripts/setup.sh installs both).

Chromium runs with a fresh profile in a directory of the caller's, and with every background
connection it would make switched off (this machine's network is closed: they would only
wait and log). As root it needs --no-sandbox. The TLS certificate of a test daemon is
warden's own self-signed one, so the session accepts it (acceptInsecureCerts).
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import JavascriptException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
T = TypeVar("T")


class Browser:
    """One Chromium with its own profile directory; `close()` ends it and its driver."""

    def __init__(self, profile: Path, shots: Path | None = None):
        profile.mkdir(parents=True, exist_ok=True)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={profile}")
        opts.accept_insecure_certs = True
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(CHROMEDRIVER, log_output=os.devnull)
        self.driver = webdriver.Chrome(options=opts, service=service)
        self.driver.set_page_load_timeout(60)
        self.shots = shots
        self.alerts: list[str] = []

    def close(self) -> None:
        try:
            self.driver.quit()
        except WebDriverException:
            pass

    # ---- pages
    def get(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        els = self.finds(css)
        return "\n".join(str(e.text) for e in els)

    def wait(self, what: Callable[[], T], timeout: float = 30.0, message: str = "") -> T:
        """Poll `what` until it returns something true; its last exception or value says why
        not."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                got = what()
                if got:
                    return got
                last = got
            except (WebDriverException, JavascriptException, AssertionError, KeyError) as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(f"{message or 'condition'} not met in {timeout}s: {last!r}")
            time.sleep(0.1)

    def wait_text(self, css: str, needle: str, timeout: float = 30.0) -> str:
        return self.wait(
            lambda: (t := self.text(css)) and needle in t and t,
            timeout,
            f"{needle!r} in {css}",
        )

    def console_log(self) -> list[dict[str, Any]]:
        """The page's console messages since the last call (CSP violations land here)."""
        return list(self.driver.get_log("browser"))

    def screenshot(self, name: str) -> Path | None:
        if self.shots is None:
            return None
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.js("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))
        return path

    # ---- what the page shows of a terminal
    def terminal_text(self, css: str = "#terminal .xterm-rows") -> str:
        """The rows xterm.js draws (its DOM renderer: one element per row)."""
        return str(
            self.js(
                "const e = document.querySelector(arguments[0]);return e ? e.innerText : '';", css
            )
        )

    def player_text(self) -> str:
        """The screen asciinema-player shows."""
        return self.terminal_text("#player .ap-term")


def dump(obj: object) -> str:
    return json.dumps(obj, indent=1, default=str)
