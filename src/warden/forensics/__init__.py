"""Honeypot operations on what warden already records (issue 16, parts 1-3).

- `timeline`: pure. Parsed sources in (session-log records, flows, file changes, events),
  one sorted list of entries out; every `input`/`exec` entry says where `warden replay
  --at` starts playing it.
- `flows`: pcap files -> flows (5-tuple, bytes, DNS names asked), parsed with dpkt.
- `sources`: the thin readers that find a boot's files and feed `timeline`.
- `render`: the timeline as text (termsafe) and as one self-contained HTML page.
- `evidence`, `signing`: the signed evidence archive (docs/formats/evidence.md).
- `recycle`: the pure policy behind the fleet key `recycle` (warden.spec.recycle).
- `operations`: what the daemon does for timeline, evidence and recycle (guest paused, disk
  moved aside, fresh boot); `feature`: its routes and the policy's driver.
"""
