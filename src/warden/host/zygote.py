"""The launch zygote: a warm, single-threaded process that forks guest launchers.

Starting `python -m warden.host.launch` costs an interpreter start and its imports (70-200 ms
measured here, most of warden's boot overhead over raw linux.uml). The daemon cannot fork the
launcher itself: it is a threaded asyncio process, and namespace and credential changes never
happen in it. So it starts this zygote once, a fresh single-threaded process that has already
imported the launcher and jail code, and asks it to fork one launcher per boot. The forked
child does exactly what `python -m warden.host.launch` does (launch.run), so both paths share
one implementation; the daemon falls back to the plain launcher when no zygote answers.

Protocol, over a SOCK_SEQPACKET socketpair (one datagram per request, no reply):
    data        JSON {"plan": LaunchPlan.to_json(), "targets": [fd numbers]}
    SCM_RIGHTS  one fd per entry of "targets", in order, then the status pipe's write end
The child puts every received fd at its target number (the numbers the kernel's command line
names), the status pipe just above them, and runs the plan; results come back on the status
pipe as for the plain launcher. The zygote reaps its children and exits when the daemon goes
(socket EOF, or PR_SET_PDEATHSIG).
"""

import array
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys

from warden.host import launch, ns

MAX_FDS = 64


def _place(received: list[int], targets: list[int]) -> int:
    """In the forked child: received[i] -> targets[i]; the last received fd (the status pipe)
    stays above every target. Returns the status fd. Everything is first moved above all the
    numbers in play, so that a target equal to a still-unmoved received fd is never
    clobbered."""
    top = max([*received, *targets, 2]) + 1
    high = [fcntl_dupfd(fd, top) for fd in received]
    for fd in received:
        os.close(fd)
    for src, dst in zip(high, targets, strict=False):
        os.dup2(src, dst, inheritable=True)
    for fd in high[:-1]:
        os.close(fd)
    return high[-1]  # close-on-exec, above every target


def fcntl_dupfd(fd: int, minimum: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)


def _child(message: bytes, fds: list[int]) -> None:
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # ignored dispositions survive exec
        launch.STATUS_FD = fds[-1] if fds else -1  # so that an error below is reported
        request = json.loads(message)
        plan = launch.LaunchPlan.from_json(request["plan"])
        targets = list(request["targets"])
        if len(fds) != len(targets) + 1:
            raise OSError(f"the zygote received {len(fds)} fds for {len(targets)} targets")
        status = _place(fds, targets)
        launch.STATUS_FD = status
        launch.run(plan)
    except BaseException as e:
        launch._report({"error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    os._exit(0)


def serve(sock: socket.socket) -> None:
    ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
    # Launchers are reaped as they end (each child sets SIGCHLD back to default first).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Ctrl-C on `warden up` reaches the whole process group: the daemon stops the fleet and
    # then closes our socket, which is how the zygote ends (no traceback on the terminal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd_size = array.array("i").itemsize
    while True:
        try:
            message, ancdata, _flags, _addr = sock.recvmsg(
                1 << 20, socket.CMSG_SPACE(MAX_FDS * fd_size)
            )
        except InterruptedError:
            continue
        if not message:
            return  # the daemon is gone
        fds: list[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(data[: len(data) - len(data) % fd_size])
                fds.extend(arr)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(message, fds)
        for fd in fds:
            os.close(fd)


def main() -> None:
    serve(socket.socket(fileno=int(sys.argv[1])))  # launchers are reaped by SIG_IGN


class Zygote:
    """The daemon's handle on its zygote (see the module docstring)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "warden.host.zygote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.sock is not None

    def spawn(self, plan: "launch.LaunchPlan", fds: list[int], status_w: int) -> None:
        """Have the zygote fork a launcher for `plan`; `fds` keep their numbers in it."""
        if not self.alive():
            raise OSError("the launch zygote is not running")
        if len(fds) + 1 > MAX_FDS:  # the caller falls back to a fresh launcher
            raise OSError(f"{len(fds)} fds are more than the zygote takes ({MAX_FDS - 1})")
        assert self.sock is not None
        message = json.dumps({"plan": plan.to_json(), "targets": fds}).encode()
        rights = array.array("i", [*fds, status_w]).tobytes()
        self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


if __name__ == "__main__":
    main()
