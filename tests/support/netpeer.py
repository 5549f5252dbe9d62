"""Small network programs run inside a test's network namespace (`python -m
tests.support.netpeer MODE ...`). Each writes one JSON line per event to LOG, with
time.monotonic() timestamps (one clock for every process on the machine).

    accept PORT LOG     TCP server: answers every connection with "peer=ADDRESS\\n" and closes;
                        logs {"t", "peer"} per connection
    sink PORT LOG       TCP server: reads and discards; logs {"t", "n"} for every read
    source HOST PORT BYTES LOG
                        TCP client: sends BYTES zero bytes; logs {"t", "sent"} at the end
"""

import json
import socket
import sys
import threading
import time
from typing import TextIO


def _log(f: TextIO, **event: object) -> None:
    f.write(json.dumps({"t": time.monotonic(), **event}) + "\n")
    f.flush()


def _listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(256)
    return s


def accept(port: int, log: TextIO) -> None:
    s = _listener(port)
    _log(log, ready=True)
    while True:
        c, addr = s.accept()
        _log(log, peer=addr[0])
        try:
            c.sendall(f"peer={addr[0]}\n".encode())
        except OSError:
            pass
        c.close()


def sink(port: int, log: TextIO) -> None:
    s = _listener(port)
    _log(log, ready=True)
    lock = threading.Lock()

    def drain(c: socket.socket) -> None:
        while True:
            try:
                data = c.recv(1 << 16)
            except OSError:
                break
            if not data:
                break
            with lock:
                _log(log, n=len(data))
        c.close()

    while True:
        c, _ = s.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()


def source(host: str, port: int, total: int, log: TextIO) -> None:
    c = socket.create_connection((host, port), timeout=30)
    block = b"\0" * (1 << 16)
    sent = 0
    while sent < total:
        sent += c.send(block[: min(len(block), total - sent)])
    c.close()
    _log(log, sent=sent)


def main() -> None:
    mode, *args = sys.argv[1:]
    with open(args[-1], "a") as log:
        if mode == "accept":
            accept(int(args[0]), log)
        elif mode == "sink":
            sink(int(args[0]), log)
        elif mode == "source":
            source(args[0], int(args[1]), int(args[2]), log)
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
