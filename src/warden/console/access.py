"""The concentrator's policy, without sockets: what a command asks, who may reach what, and the
detach escape. warden.console.concentrator performs what this decides.

Owners come from the fleet file only (no host accounts). An owner reaches the guests she owns;
an admin reaches every guest. A guest someone may not reach gets the very same answer as a
guest that does not exist, so names cannot be probed.
"""

from dataclasses import dataclass

from warden.spec.fleet import LINE_NAME, MACHINE_NAME, Fleet, Machine, Owner

ESCAPE = 0x1D  # Ctrl-]
HELP = (
    "warden console concentrator: no shell, no host commands, no file transfer, no forwarding.\n"
    "  ssh -p PORT USER@HOST                      list your guests and their lines\n"
    "  ssh -t -p PORT USER@HOST NAME[:LINE]       attach (LINE: con0, the default, or sslN)\n"
    "      --spy        watch only: your keystrokes go nowhere\n"
    "      --force      take the line over from its current writer (logged)\n"
    "      --scrollback N   first replay up to N bytes of recent output\n"
    "      --raw        the guest's bytes untouched (a spy's, or a session's without -t,\n"
    "                   is otherwise filtered: no OSC/DCS/APC strings, no terminal queries)\n"
    "  While attached: Ctrl-] then . detaches, Ctrl-] Ctrl-] sends Ctrl-], Ctrl-] ? helps.\n"
)


@dataclass(frozen=True)
class Attach:
    machine: str
    line: str
    spy: bool = False
    force: bool = False
    scrollback: int = 0
    raw: bool = False


@dataclass(frozen=True)
class ListGuests:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Refuse:
    message: str
    status: int = 1


Request = Attach | ListGuests | Help | Refuse


def parse_command(command: str | None) -> Request:
    """What an SSH exec request (or a shell request: None) asks for."""
    if command is None:
        return ListGuests()
    words = command.split()
    if not words or words[0] in ("list", "ls"):
        return ListGuests() if len(words) <= 1 else Refuse("warden: `list` takes no arguments")
    if words[0] in ("help", "-h", "--help"):
        return Help()
    if words[0] in ("scp", "rsync", "sftp", "sftp-server") or words[0].endswith("/sftp-server"):
        return Refuse("warden: file transfer (scp, sftp, rsync) is not offered here")
    target = words[0]
    name, _, line = target.partition(":")
    if not MACHINE_NAME.match(name) or any(
        not w.startswith("-") and not w.isdigit() for w in words[1:]
    ):
        return Refuse(
            f"warden: {command.strip()!r}: this is a console concentrator: no shell and no "
            "host commands; give a guest name (`help` says what it does)"
        )
    line = line or "con0"
    if not LINE_NAME.match(line):
        return Refuse(f"warden: {line!r} is not a line name (con0 or ssl0..ssl7)")
    spy = force = raw = False
    scrollback = 0
    rest = words[1:]
    while rest:
        w = rest.pop(0)
        if w in ("--spy", "-s"):
            spy = True
        elif w in ("--force", "-f"):
            force = True
        elif w == "--raw":
            raw = True
        elif w == "--scrollback" and rest and rest[0].isdigit():
            scrollback = min(int(rest.pop(0)), 1 << 20)
        else:
            return Refuse(
                f"warden: unknown option {w!r} after {target} "
                "(options: --spy, --force, --raw, --scrollback N)",
                status=2,
            )
    if spy and force:
        return Refuse("warden: --spy and --force do not go together (a spy never writes)")
    return Attach(name, line, spy, force, scrollback, raw)


def reachable(fleet: Fleet, user: str) -> list[Machine]:
    """The guests `user` may reach: her own, or all of them for an admin."""
    owner = fleet.owner(user)
    if owner is None:
        return []
    return [m for m in fleet.machines if owner.admin or m.owner == owner.name]


def resolve(fleet: Fleet, user: str, req: Attach) -> Machine | Refuse:
    machine = next((m for m in reachable(fleet, user) if m.name == req.machine), None)
    if machine is None:
        # The same words whether the guest is someone else's or does not exist.
        return Refuse(f"warden: no guest named {req.machine!r} that you can reach")
    if req.line not in machine.lines:
        return Refuse(
            f"warden: {machine.name} has no line {req.line!r} (its lines: "
            f"{', '.join(machine.lines)})"
        )
    return machine


def owner_keys(owner: Owner | None) -> tuple[str, ...]:
    return owner.keys if owner is not None else ()


class EscapeFilter:
    """Finds the detach escape in a client's keystrokes (sans-io, keeps state across chunks).

    Ctrl-] . detaches; Ctrl-] Ctrl-] sends one Ctrl-]; Ctrl-] ? asks for help; Ctrl-] and any
    other byte sends both bytes (so a lone Ctrl-] is never lost).
    """

    def __init__(self) -> None:
        self.pending = False

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Returns actions in order: ("data", bytes), ("detach", b""), ("help", b"")."""
        out: list[tuple[str, bytes]] = []
        buf = bytearray()
        for b in data:
            if self.pending:
                self.pending = False
                if b == ord("."):
                    if buf:
                        out.append(("data", bytes(buf)))
                    out.append(("detach", b""))
                    return out  # what follows the detach is not sent
                if b == ord("?"):
                    if buf:
                        out.append(("data", bytes(buf)))
                        buf.clear()
                    out.append(("help", b""))
                    continue
                if b == ESCAPE:
                    buf.append(ESCAPE)
                    continue
                buf += bytes([ESCAPE, b])
                continue
            if b == ESCAPE:
                self.pending = True
                continue
            buf.append(b)
        if buf:
            out.append(("data", bytes(buf)))
        return out
