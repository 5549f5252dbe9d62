"""When a guest's recycle policy (warden.spec.recycle) says it is due: a pure watch per boot.

Observations in (with the host's monotonic time), `due(now)` out; the driver
(warden.forensics.feature) feeds it from the session logs as they are written and asks it
once a second.

What counts, precisely:
- A *session* is a client attached to one of the guest's lines (the concentrator's ssh
  users, `warden console`: each `attach` starts one, each `detach` ends one), or an ssh login
  inside the guest: a pty pair of the tty log on which a login shell ran (an EXEC with argv[0]
  starting with '-', which sshd and login use), from that exec until the pair's master closes.
- *on-logout*: due LOGOUT_GRACE seconds after the number of sessions fell to zero, if at least
  one session began in this boot and none began since. So a pristine guest nobody used is
  never recycled, and a reconnect within the grace keeps the guest.
- *idle:D*: due once D seconds passed since the last *activity* in a boot that had some:
  activity is a session beginning or ending, a line typed into (any client input, any pty
  keystroke of the tty log) and an exec on a terminal (an EXEC record with a tty). Output
  alone is not activity (a guest printing a clock is idle), nor are execs without a terminal
  (cron, daemons; also `ssh host cmd` without a pty, which the tty log cannot tell apart).
- *every:D*: due D seconds after the boot began, used or not.
"""

from dataclasses import dataclass, field

from warden.spec.recycle import RecyclePolicy

LOGOUT_GRACE = 5.0


@dataclass
class RecycleWatch:
    policy: RecyclePolicy
    boot: int
    started: float
    clients: int = 0  # attached clients over all lines
    logins: set[int] = field(default_factory=set)  # pty sessions (master tty ids) logged in
    used: bool = False  # a session began in this boot
    empty_since: float | None = None  # when the sessions fell to zero
    last_activity: float | None = None
    fired: bool = False  # due was reported; one recycle per boot

    @property
    def sessions(self) -> int:
        return self.clients + len(self.logins)

    def _began(self, now: float) -> None:
        self.used = True
        self.empty_since = None
        self.last_activity = now

    def _ended(self, now: float) -> None:
        self.last_activity = now
        if self.sessions == 0 and self.used:
            self.empty_since = now

    def attached(self, now: float) -> None:
        self.clients += 1
        self._began(now)

    def detached(self, now: float) -> None:
        if self.clients == 0:
            return  # a client that attached before this daemon counted: nothing to end
        self.clients -= 1
        self._ended(now)

    def login(self, session: int, now: float) -> None:
        if session not in self.logins:
            self.logins.add(session)
            self._began(now)

    def closed(self, session: int, now: float) -> None:
        if session in self.logins:
            self.logins.discard(session)
            self._ended(now)

    def activity(self, now: float) -> None:
        self.last_activity = now

    def due(self, now: float) -> str | None:
        """The reason to recycle now, or None. Once per boot."""
        if self.fired:
            return None
        reason: str | None = None
        p = self.policy
        if p.mode == "every" and now - self.started >= p.seconds:
            reason = f"every {p.seconds:g}s: the boot ran {now - self.started:.0f}s"
        elif p.mode == "idle" and self.last_activity is not None:
            quiet = now - self.last_activity
            if quiet >= p.seconds:
                reason = f"idle {p.seconds:g}s: nothing done for {quiet:.0f}s"
        elif p.mode == "on-logout" and self.empty_since is not None and self.sessions == 0:
            if now - self.empty_since >= LOGOUT_GRACE:
                reason = "on-logout: the last session ended"
        if reason is not None:
            self.fired = True
        return reason
