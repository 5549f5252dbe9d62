"""What a honeypot guest's boot needs from the host: kernel arguments, fds and two servers.

For the daemon (and tests): `check(kernel, tty_log, disguise)` validates a machine's honeypot
settings; `prepare(...)` loads the disguise profile (so a bad one fails before any boot),
makes the tty log pipe and the disguise socketpair, and returns a HoneypotBoot whose
`kernel_args` and `pass_fds` go on the kernel's command line and into its process. Call
`start()` before starting the kernel (the rule set must be waiting for it), then
`kernel_started()` once it runs, and `stop()` when the guest is gone.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from warden.honeypot.disguise_server import DisguiseServer
from warden.honeypot.profile import DisguiseError, Profile, load_profile
from warden.persona import Persona, kernel_text, memfd
from warden.sessionlog.ttylog import Record, TtyLogPipe

HONEYPOT_KERNEL = "honeypot"


def check(kernel: str, tty_log: bool, disguise: str) -> Profile | None:
    """DisguiseError unless the settings can work together; the loaded profile, if any."""
    if (tty_log or disguise) and kernel != HONEYPOT_KERNEL:
        parts = ["tty_log = true"] if tty_log else []
        parts += [f"disguise = {disguise!r}"] if disguise else []
        wanted = " and ".join(parts)
        raise DisguiseError(
            f'{wanted} needs kernel = "{HONEYPOT_KERNEL}" (the stock kernel has neither); '
            f"build it with `warden kernel build {HONEYPOT_KERNEL}`"
        )
    return load_profile(disguise) if disguise else None


@dataclass
class HoneypotBoot:
    tty_log: TtyLogPipe | None = None
    disguise: DisguiseServer | None = None
    persona_fd: int = -1  # a memfd with warden.persona.kernel_text (kernel/0010)
    _started: bool = field(default=False, repr=False)

    @property
    def kernel_args(self) -> tuple[str, ...]:
        """Host-only parameters: the kernel keeps them off the guest's command line."""
        args = []
        if self.tty_log is not None:
            args.append(self.tty_log.kernel_arg)
        if self.disguise is not None:
            args.append(self.disguise.kernel_arg)
        if self.persona_fd >= 0:
            args += [f"persona_fd={self.persona_fd}", "root=/dev/sda"]  # disks are sdX
        return tuple(args)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        fds = []
        if self.tty_log is not None and self.tty_log.kernel_fd is not None:
            fds.append(self.tty_log.kernel_fd)
        if self.disguise is not None and self.disguise.kernel_sock is not None:
            fds.append(self.disguise.kernel_fd)
        if self.persona_fd >= 0:
            fds.append(self.persona_fd)
        return tuple(fds)

    async def start(self) -> None:
        if self.tty_log is not None:
            self.tty_log.start()
        if self.disguise is not None:
            await self.disguise.start()
        self._started = True

    def kernel_started(self) -> None:
        if self.tty_log is not None:
            self.tty_log.kernel_started()
        if self.disguise is not None:
            self.disguise.kernel_started()
        if self.persona_fd >= 0:
            os.close(self.persona_fd)
            self.persona_fd = -1

    async def stop(self) -> None:
        if self.tty_log is not None:
            await self.tty_log.stop()
        if self.disguise is not None:
            await self.disguise.stop()

    async def __aenter__(self) -> "HoneypotBoot":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def prepare(
    *,
    kernel: str = HONEYPOT_KERNEL,
    tty_log: bool = False,
    disguise: str | Path = "",
    raw_log: Path | None = None,
    on_record: Callable[[Record], None] | None = None,
    name: str = "guest",
    persona: Persona | None = None,
) -> HoneypotBoot:
    """Everything a honeypot boot needs; DisguiseError (before anything is made) if wrong.
    `persona`: the machine to show (needs the kernel's persona_fd=, kernel/0010)."""
    profile = check(kernel, tty_log, str(disguise))
    boot = HoneypotBoot()
    if tty_log:
        boot.tty_log = TtyLogPipe(raw_log, on_record)
    if profile is not None:
        if persona is not None:
            profile = profile.with_cmdline(persona.cmdline)
        boot.disguise = DisguiseServer.pair(profile, name)
    if persona is not None:
        boot.persona_fd = memfd(kernel_text(persona))
    return boot
