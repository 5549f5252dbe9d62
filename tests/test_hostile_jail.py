"""Issue 18, section 1: the jail of a guest shows nothing of the host and takes no write.

Root in a jailed guest can always run `mount -t hostfs none /mnt`: the kernel then shows its own
root, the jail's. A guest whose disk an intruder owns can do it from its very first process,
while the jail still holds the disks the kernel opens by path. So these tests look both after
the boot (the jail emptied) and from the guest's own init, before anything is emptied. The home
and the image sit under deep, telling paths, so a leaked name is visible.
"""

import base64
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from tests.test_jail import run_on, wait_empty, wait_state
from warden.paths import Layout, layout

pytestmark = pytest.mark.guest

SECRET = "secret-customer-name"
FILL = 50 << 20  # what a probe tries to write into every directory it finds

# Run as the guest's /sbin/init: every 0.2 s for 5 s (from before the seed is read until long
# after warden has emptied the jail), list what hostfs shows and try to write into each directory
# found; then hand over to the image's own init. Results go to /probe.txt on the guest's disk.
PROBE = f"""#!/bin/sh
probe() {{
    mkdir -p /hfs
    mount -t hostfs none /hfs 2>>/probe.txt || return
    echo "== listing $1" >> /probe.txt
    ls -laR /hfs >> /probe.txt 2>&1
    find /hfs -xdev -type d 2>/dev/null | while read d; do
        if dd if=/dev/zero of="$d/fill" bs=64k count={FILL >> 16} 2>/dev/null; then :; fi
        if [ -e "$d/fill" ]; then
            echo "WROTE $(ls -l "$d/fill" | awk '{{print $5}}') $d" >> /probe.txt
            rm -f "$d/fill"
        fi
    done
    umount /hfs
}}
probe 0
(i=1; while [ $i -le 25 ]; do sleep 0.2; probe $i; i=$((i + 1)); done; echo "== done" \\
    >> /probe.txt; sync) &
exec /sbin/init.real
"""


@pytest.fixture
def telling_home(minimal_image: Path) -> Iterator[tuple[Layout, Path]]:
    """A WARDEN_HOME and a base image under paths that name a customer."""
    top = Path(tempfile.mkdtemp(prefix="wh-", dir="/tmp"))
    os.chmod(top, 0o755)
    try:
        home = layout(top / SECRET / "wh")
        home.ensure()
        images = top / f"{SECRET}-images" / "acme"
        images.mkdir(parents=True)
        for d in (top / SECRET, top / f"{SECRET}-images", images):
            os.chmod(d, 0o755)
        image = images / "acme-prod.img"
        shutil.copy2(minimal_image, image)
        os.chmod(image, 0o644)
        yield home, image
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _telling(text: str, home: Layout, image: Path) -> list[str]:
    """The host names in `text`: any component of the home's or the image's path."""
    parts = {p for p in (*home.home.parts, *image.parts) if p not in ("/", "tmp")}
    parts |= {"machines", image.name}
    return sorted(p for p in parts if re.search(rf"(^|[\s/]){re.escape(p)}($|[\s/])", text))


def test_hostfs_shows_no_host_name_and_takes_no_write(
    telling_home: tuple[Layout, Path],
) -> None:
    home, image = telling_home
    d = DaemonProc(home).start()
    try:
        d.apply(FLEET_HEAD + machine_toml("tj", image=str(image)))
        wait_state(d, "tj", "running")
        wait_empty(d, "tj")
        # After the boot: nothing at all, and no room to write.
        listing = run_on(d, "tj", "mkdir -p /mnt; mount -t hostfs none /mnt && ls -laR /mnt")
        entries = [ln.split()[-1] for ln in listing.splitlines() if ln.startswith(("d", "-", "l"))]
        assert sorted(entries) == [".", ".."], listing
        wrote = run_on(
            d,
            "tj",
            "dd if=/dev/zero of=/mnt/fill bs=64k count=800 2>&1 | tail -1; mkdir /mnt/d 2>&1; "
            "ls -l /mnt/fill 2>&1; umount /mnt",
            timeout=60,
        )
        assert "No such file" in wrote and "/mnt/fill" in wrote, wrote
        # From the guest's own init, at every boot from now on (an intruder's persistence).
        b64 = base64.b64encode(PROBE.encode()).decode()
        run_on(
            d,
            "tj",
            f"mv /sbin/init /sbin/init.real; echo {b64} | base64 -d > /sbin/init; "
            "chmod 755 /sbin/init; sync",
        )
        d.cli("stop", "tj")
        d.cli("start", "tj")
        wait_empty(d, "tj")
        out = ""
        for _ in range(40):
            out = run_on(d, "tj", "cat /probe.txt", timeout=10)
            if "== done" in out:
                break
        assert "== done" in out and "== listing 0" in out, out
        assert _telling(out, home, image) == [], out
        writes = [ln for ln in out.splitlines() if ln.startswith("WROTE")]
        assert all(int(w.split()[1]) <= 16 << 10 for w in writes), writes
        assert run_on(d, "tj", "hostname").strip() == "tj"  # the guest lives on
    finally:
        d.close()
        d.assert_clean()


def _owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_control_sockets_and_seeds_are_the_guests_alone(daemon: DaemonProc) -> None:
    """No world-writable control socket, no world-readable seed (it holds password hashes and
    keys), with a jail or without one; and the kernels still reach their sockets."""
    daemon.apply(FLEET_HEAD + machine_toml("pj") + machine_toml("pu", jail=False))
    wait_state(daemon, "pj", "running")
    wait_state(daemon, "pu", "running")
    uid = json.loads(daemon.cli("jail", "audit", "pj", "--json").stdout)["uid"]
    jailed, open_ = daemon.layout.machine("pj"), daemon.layout.machine("pu")
    assert _owner_mode(open_ / "ctl") == (0, 0, 0o700)
    assert _owner_mode(open_ / "ctl" / "notify") == (0, 0, 0o600)
    assert _owner_mode(open_ / "ctl" / "reply") == (0, 0, 0o600)
    assert _owner_mode(open_ / "seed.img") == (0, 0, 0o400)
    assert _owner_mode(jailed / "ctl") == (0, uid, 0o1770)
    assert _owner_mode(jailed / "ctl" / "notify") == (0, uid, 0o660)
    assert _owner_mode(jailed / "ctl" / "reply") == (0, uid, 0o660)
    assert _owner_mode(jailed / "seed.img") == (uid, uid, 0o400)
    for name in ("pj", "pu"):
        assert daemon.cli("mconsole", name, "version").stdout.startswith("Linux ")
        assert run_on(daemon, name, "hostname").strip() == name  # it read its seed
