"""A timeline for people: one line per entry on a terminal, or one HTML file.

Guest text reaches a terminal through warden.termsafe.line (every control escaped) and the
page through html.escape. The page is a single file an analyst opens offline: inline CSS, no
script at all, no external asset, and a Content-Security-Policy that forbids scripts and every
load (`default-src 'none'`), so even a string that slipped through could neither run nor call
out. The kind filters are CSS only (checkboxes before the table).
"""

import html
import time
from collections.abc import Iterable
from typing import Any

from warden import termsafe
from warden.forensics.timeline import KINDS, Entry


def _local(time_us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_us / 1e6)) + (
        f".{time_us % 1_000_000:06d}"
    )


def _size(n: Any) -> str:
    return "-" if n is None else str(n)


def _port(p: Any) -> str:
    return "" if p is None else f":{p}"


def summary(e: Entry) -> str:
    """The entry in a few words (guest text unescaped: the caller escapes)."""
    f = e.fields
    if e.kind == "session":
        who = f.get("user") or (f"uid {f['uid']}" if "uid" in f else "")
        src = f" from {f['source']}" if f.get("source") else ""
        extra = f" after {f['seconds']}s" if "seconds" in f else ""
        return f"{f.get('action')} {f.get('session')} {who}{src}{extra}".strip()
    if e.kind == "input":
        who = f" by {f['user']}" if f.get("user") else ""
        cut = "" if f.get("complete") else " (no Enter yet)"
        return f"{f.get('session')}{who}: {f.get('text')}{cut}"
    if e.kind == "exec":
        where = f" on {f['session']}" if f.get("session") else ""
        return f"{f.get('command')} (pid {f.get('pid')} uid {f.get('uid')}{where})"
    if e.kind == "flow":
        dns = f" dns {','.join(f['dns'])}" if f.get("dns") else ""
        return (
            f"{f.get('proto')} {f.get('src')}{_port(f.get('sport'))} -> "
            f"{f.get('dst')}{_port(f.get('dport'))} {f.get('bytes_out')}/{f.get('bytes_in')} "
            f"bytes {f.get('packets_out')}/{f.get('packets_in')} packets{dns}"
        )
    if e.kind == "file":
        sha = f" sha256 {f['sha256'][:16]}…" if f.get("sha256") else ""
        what = f" ({','.join(f['changes'])})" if f.get("changes") else ""
        return (
            f"{f.get('action')} {f.get('type')} {f.get('path')} size {_size(f.get('size'))}"
            f"{what}{sha} [{f.get('time_source')}]"
        )
    rest = {k: v for k, v in f.items() if k not in ("source", "event")}
    detail = " ".join(f"{k}={v}" for k, v in rest.items())
    return f"{f.get('source')}:{f.get('event')} {detail}".strip()


def text_lines(entries: Iterable[Entry]) -> Iterable[str]:
    for e in entries:
        at = f"  [--at {e.fields['offset']}]" if "offset" in e.fields else ""
        yield f"{_local(e.time_us)}  {e.kind:<7} {termsafe.line(summary(e))}{at}"


CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:1em;color:#222}
h1{font-size:18px} .meta{color:#555;margin-bottom:.8em}
table{border-collapse:collapse;width:100%} td,th{padding:2px 6px;vertical-align:top;
border-bottom:1px solid #eee;text-align:left} td.t{white-space:nowrap;font-family:monospace}
td.d{font-family:monospace;white-space:pre-wrap;word-break:break-all}
tr.session td.k{color:#06c} tr.input td.k{color:#a50} tr.exec td.k{color:#c00}
tr.flow td.k{color:#080} tr.file td.k{color:#708} tr.event td.k{color:#666}
label{margin-right:1em} details{color:#555} code{font-size:12px}
"""


def _filters() -> tuple[str, str]:
    boxes = "".join(
        f'<input type="checkbox" id="f-{k}" checked><label for="f-{k}">{k}</label>' for k in KINDS
    )
    rules = "".join(f"#f-{k}:not(:checked)~table tr.{k}{{display:none}}" for k in KINDS)
    return boxes, rules


def _esc(value: object) -> str:
    """Controls made visible (termsafe), then HTML-escaped: nothing a guest typed is markup."""
    return html.escape(termsafe.text(str(value)))


def html_page(entries: list[Entry], meta: dict[str, Any]) -> str:
    esc = _esc
    boxes, rules = _filters()
    rows = []
    for e in entries:
        f = e.fields
        replay = f.get("replay")
        extra = f"<br><code>{esc(replay)}</code>" if replay else ""
        detail = "".join(
            f"<b>{esc(k)}</b>: {esc(v)}<br>" for k, v in f.items() if k not in ("replay",)
        )
        rows.append(
            f'<tr class="{esc(e.kind)}"><td class="t">{esc(_local(e.time_us))}</td>'
            f'<td class="k">{esc(e.kind)}</td><td class="d">{esc(summary(e))}{extra}'
            f"<details><summary>fields</summary>{detail}</details></td></tr>"
        )
    counts = ", ".join(f"{esc(str(k))} {esc(str(v))}" for k, v in meta.get("counts", {}).items())
    title = esc(f"warden timeline: {meta.get('machine')} {meta.get('scope')}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">\n"
        f"<title>{title}</title><style>{CSS}{rules}</style></head><body>\n"
        f'<h1>{title}</h1>\n<div class="meta">{esc(str(meta.get("start")))} to '
        f"{esc(str(meta.get('end')))} (UTC); times below are the host's, local; {counts}</div>\n"
        f"{boxes}\n<table><thead><tr><th>time</th><th>kind</th><th>what</th></tr></thead>"
        "<tbody>\n" + "\n".join(rows) + "\n</tbody></table></body></html>\n"
    )
