"""How detectable a honeypot guest is: a battery of public and UML-specific checks run inside
the guest (`warden honeypot score NAME`).

- checks.toml: the battery as data (probes run in the guest, checks judged on their answers);
- table.py: reads and checks it; script.py: the guest script and the reader of its answers;
- judge.py: the pure judge (recorded answers in, a report out); runner.py: the daemon's driver.
"""
