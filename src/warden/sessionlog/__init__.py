"""Session logs and tty logs on disk: the formats, their readers and the writer thread.

Below both the console feature (which logs every terminal line) and the honeypot feature
(which logs the kernel's tty log): neither imports the other, both import this.

    codec.py      the session-log format (docs/formats/session-log.md): header, records,
                  the HMAC chain, a verifying reader
    ttylog.py     the kernel tty-log record codec (docs/formats/ttylog.md)
    ttyview.py    tty-log records read back as terminal streams
    store.py      where log files live, their names, the key; finding and opening them
    manifest.py   the per-guest logs manifest (what parts were opened, detached, ended)
    quota.py      per-guest quotas and the disk's room, by tier
    logfile.py    one open log file (its chain, buffer, quota accounting, writes)
    worker.py     the writer's threads and the compressor
    writer.py     the one writer thread of a daemon, and SessionLog, the LineLog it serves
    verify.py, search.py, replay.py, export.py: `warden logs` (they read files: no daemon)
"""
