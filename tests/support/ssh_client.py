"""OpenSSH's real `ssh` client against the concentrator, with keys made for the test.

`SshUser` owns an ed25519 key pair made with ssh-keygen; `run()` runs one ssh command to the
end; `session()` starts an ssh process whose stdin/stdout the test drives (`send`, `expect`).
Every process is killed at `close()` (the tests call it in `finally`).
"""

import os
import re
import subprocess
import threading
import time
from pathlib import Path

SSH_OPTS = [
    "-F",
    "/dev/null",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "ConnectTimeout=20",
    "-o",
    "IdentitiesOnly=yes",
]


class SshUser:
    def __init__(self, directory: Path, name: str, key: bool = True):
        self.name = name
        self.dir = directory
        self.key = directory / f"id_{name}"
        if key and not self.key.exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"{name}@test",
                    "-f",
                    str(self.key),
                ],
                check=True,
            )

    @property
    def public(self) -> str:
        return (self.dir / f"id_{self.name}.pub").read_text().strip()

    def argv(
        self,
        port: int,
        *command: str,
        tty: bool = False,
        batch: bool = True,
        extra: tuple[str, ...] = (),
        log_level: str = "ERROR",
    ) -> list[str]:
        args = [
            "ssh",
            *SSH_OPTS,
            "-o",
            f"LogLevel={log_level}",
            "-p",
            str(port),
            "-i",
            str(self.key),
        ]
        args += ["-o", "BatchMode=yes"] if batch else []
        args += ["-tt"] if tty else ["-T"]
        return [*args, *extra, f"{self.name}@127.0.0.1", *command]

    def run(
        self, port: int, *command: str, input: bytes = b"", timeout: float = 60, **kw: object
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(port, *command, **kw),  # type: ignore[arg-type]
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def session(self, port: int, *command: str, **kw: object) -> "SshSession":
        return SshSession(self.argv(port, *command, **kw))  # type: ignore[arg-type]

    def password_login(
        self,
        port: int,
        password: str,
        *command: str,
        prompts: int = 1,
        extra: tuple[str, ...] = (),
        log_level: str = "ERROR",
    ) -> tuple[subprocess.CompletedProcess[bytes], int]:
        """ssh with `password` only (given by an askpass script, up to `prompts` times);
        returns the result and how many times ssh asked for the password."""
        count = self.dir / f"asked-{self.name}-{time.monotonic_ns()}"
        askpass = self.dir / f"askpass-{self.name}.sh"
        askpass.write_text(f"#!/bin/sh\necho x >> {count}\necho '{password}'\n")
        askpass.chmod(0o700)
        options = (
            "PreferredAuthentications=password",
            f"NumberOfPasswordPrompts={prompts}",
            "PubkeyAuthentication=no",
        )
        argv = self.argv(
            port,
            *command,
            batch=False,
            extra=(*(x for o in options for x in ("-o", o)), *extra),
            log_level=log_level,
        )
        env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
        r = subprocess.run(
            argv, capture_output=True, timeout=120, env=env, stdin=subprocess.DEVNULL
        )
        asked = len(count.read_text().splitlines()) if count.exists() else 0
        return r, asked


class SshSession:
    """A running ssh whose stdout and stderr are collected by threads."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.out = bytearray()
        self.err = bytearray()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, f: object, buf: bytearray) -> None:
        fd = f.fileno()  # type: ignore[attr-defined]
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                buf += data

    def send(self, data: bytes | str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data.encode() if isinstance(data, str) else data)
        self.proc.stdin.flush()

    def expect(
        self, pattern: bytes | str, timeout: float = 30, stream: str = "out", start: int = 0
    ) -> re.Match[bytes]:
        pat = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S)
        buf = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                m = pat.search(bytes(buf), start)
            if m:
                return m
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self._alive()):
                with self._lock:
                    raise AssertionError(
                        f"{pat.pattern!r} not seen in {stream} within {timeout}s; "
                        f"out={bytes(self.out)[-2000:]!r} err={bytes(self.err)[-2000:]!r} "
                        f"rc={self.proc.poll()}"
                    )
            time.sleep(0.02)

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout: float = 30) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def _close_pipes(self) -> None:
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None and not f.closed:
                f.close()

    def close_input(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.close_input()
        for t in self._threads:
            t.join(5)
        self._close_pipes()
