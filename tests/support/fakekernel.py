"""A stand-in for a guest's UML kernel in driver tests: no UML, the sockets UML uses.

FakeLauncher is a daemon/launcher.py Launcher: for each boot it records the LaunchPlan and
starts this file as a process that joins the guest's cgroup, binds the mconsole socket where
UML makes it (ctl/NAME/mconsole), sends the "up" notification (SOCKET) UML sends at boot after
`up_after` seconds, then serves mconsole requests: "answer" with an empty success, "silent"
reads them and never replies. It ends when it is killed (cgroup.kill, as a guest's processes
are) or asked to `halt`/`cad` in "answer" mode.
"""

import asyncio
import json
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.errors import WardenError
from warden.host.launch import LaunchPlan

NOTIFY = struct.Struct("=IIII")  # magic, version, type, len (warden.uml.mconsole)
REPLY = struct.Struct("=III")  # err, more, len
MAGIC, VERSION, SOCKET_UP = 0xCAFEBABE, 2, 0


def main(cfg: dict[str, Any]) -> None:
    for f in cfg["procs"]:
        with open(f, "w") as out:
            out.write(str(os.getpid()))
    os.chdir(cfg["ctl"])
    os.makedirs(cfg["name"], exist_ok=True)
    path = os.path.join(cfg["name"], "mconsole")
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    if cfg["up_after"] is not None:
        time.sleep(cfg["up_after"])
        data = os.path.abspath(path).encode() + b"\0"
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        n.sendto(NOTIFY.pack(MAGIC, VERSION, SOCKET_UP, len(data)) + data, cfg["notify"])
    while True:
        msg, addr = s.recvfrom(4096)
        if cfg["mode"] == "answer" and addr:
            s.sendto(REPLY.pack(0, 0, 0), addr)
            if b"halt" in msg or b"cad" in msg:
                return


@dataclass
class FakeLauncher:
    mode: str = "answer"  # how the fake kernel answers its mconsole: "answer" or "silent"
    up_after: float | None = 0.2  # seconds to "up"; None: it never comes up
    fail: str = ""  # raise this instead of starting anything
    gate: asyncio.Event | None = None  # launch waits for it (a slow launcher)
    plans: list[LaunchPlan] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    async def launch(self, name: str, plan: LaunchPlan, fds: list[int]) -> int:
        self.plans.append(plan)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise WardenError(f"{name}: starting the kernel failed: {self.fail}")
        cfg = {
            "name": name,
            "procs": plan.cgroup_procs,
            "ctl": plan.cwd,
            "notify": str(Path(plan.cwd) / "notify"),
            "mode": self.mode,
            "up_after": self.up_after,
        }
        pid = os.posix_spawn(sys.executable, [sys.executable, __file__, json.dumps(cfg)], {})
        self.pids.append(pid)
        return pid


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
