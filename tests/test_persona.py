"""Personas (warden.persona): stable per machine, plausible, unique across a fleet, and what
the honeypot kernel reads at boot. Pure, except the home key and the ext4 UUID reader."""

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from warden import persona as pm
from warden.honeypot.score import judge as j
from warden.paths import Layout
from warden.spec import fleet as fleetmod

KEY = bytes(range(32))


def test_a_seed_always_gives_the_same_plausible_machine() -> None:
    a = pm.derive(pm.machine_seed(KEY, "inst", "pot"), "AuthenticAMD", nics=2)
    assert a == pm.derive(pm.machine_seed(KEY, "inst", "pot"), "AuthenticAMD", nics=2)
    b = pm.derive(pm.machine_seed(KEY, "inst", "pot2"), "AuthenticAMD", nics=2)
    assert a.unique_values() != b.unique_values()
    model = next(m for m in pm.MODELS if m.product == a.dmi["product_name"])
    assert model.cpu_vendor == "AuthenticAMD"  # an EPYC host poses as an EPYC server
    for nic in a.nics:
        assert nic.mac[:8] in model.ouis
        # the score's own MAC judge finds nothing virtual or locally administered
        assert j._mac(f"eth0 {nic.mac}\n") == []
        assert any(f.slot == nic.pci and f.cls == 0x020000 for f in a.pci)
    assert len({n.mac for n in a.nics}) == 2
    assert any(f.slot == a.disk.pci and f.cls == 0x010601 for f in a.pci)  # SATA AHCI
    assert re.fullmatch(r"[a-z]{3}-[a-z]+\d\d", a.hostname)
    if a.dmi["sys_vendor"] == "Dell Inc.":
        assert a.dmi["product_uuid"].startswith("4c4c4544-")
        assert re.fullmatch(r"[0-9BCDFGHJ-NP-TV-Z]{7}", a.dmi["product_serial"])
    assert a.dmi["chassis_type"] == "23"
    intel = pm.derive(pm.machine_seed(KEY, "inst", "pot"), "GenuineIntel")
    assert next(m for m in pm.MODELS if m.product == intel.dmi["product_name"]).cpu_vendor == (
        "GenuineIntel"
    )


def test_no_two_machines_of_a_fleet_share_a_hostname_mac_serial_or_uuid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = pm.fleet_personas(KEY, "inst", [(f"m{i}", 2) for i in range(300)], "GenuineIntel")
    values = [v for p in fleet.values() for v in p.unique_values()]
    assert len(values) == len(set(values)) == 300 * 6
    # with only 24 possible hostnames, 20 machines must collide and be re-derived
    monkeypatch.setattr(pm, "SITES", ("fra",))
    monkeypatch.setattr(pm, "ROLES", ("web",))
    small = pm.fleet_personas(KEY, "inst", [(f"m{i}", 1) for i in range(20)])
    names = [p.hostname for p in small.values()]
    assert len(set(names)) == 20
    plain = [pm.derive(pm.machine_seed(KEY, "inst", f"m{i}"), nics=1).hostname for i in range(20)]
    assert len(set(plain)) < 20  # the collisions were real
    # a machine keeps its persona when others join the fleet (unless it collided)
    assert pm.fleet_personas(KEY, "inst", [("m0", 1)])["m0"] == small["m0"]


def test_the_kernel_text_is_the_documented_format() -> None:
    p = pm.derive(
        pm.machine_seed(KEY, "inst", "pot"),
        "GenuineIntel",
        root_uuid="5f1c2d9e-8b3a-4e67-9c1d-2a7b4e0f3d81",
    )
    text = pm.kernel_text(p).decode()
    lines = text.splitlines()
    assert lines[0] == "version=1"
    assert lines[1] == (
        "cmdline=BOOT_IMAGE=/boot/vmlinuz-6.1.176 root=UUID=5f1c2d9e-8b3a-4e67-9c1d-2a7b4e0f3d81 "
        "ro net.ifnames=0 quiet"
    )
    keys = [ln.split("=", 1)[0] for ln in lines]
    for k in ("dmi.sys_vendor", "dmi.product_serial", "disk.0.model", "nic.0.pci", "pci"):
        assert k in keys
    for ln in lines:
        if ln.startswith("pci="):
            assert re.fullmatch(
                r"pci=0000:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] [0-9a-f]{4}:[0-9a-f]{4} "
                r"[0-9a-f]{4}:[0-9a-f]{4} [0-9a-f]{6} [0-9a-f]{2}",
                ln,
            ), ln
    assert len(pm.kernel_text(p)) < 16384  # the kernel reads at most 16 KiB
    bad = pm.Persona(p.hostname, {**p.dmi, "sys_vendor": "x\ny"}, p.pci, p.disk, p.nics, "c")
    with pytest.raises(ValueError, match="no line breaks"):
        pm.kernel_text(bad)


def test_the_home_key_is_made_once_and_kept_private(home: Layout) -> None:
    key = pm.home_key(home)
    path = home.keys / pm.KEY_FILE
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pm.home_key(home) == key


def test_the_fleets_personas_are_its_disguised_machines(home: Layout) -> None:
    pot = machine_toml("pot", disguise="baremetal", kernel="honeypot")
    text = FLEET_HEAD + pot + machine_toml("web")
    f = fleetmod.parse(text, "f.toml")
    got = pm.fleet_of(home, f)
    assert list(got) == ["pot"]
    assert (
        got["pot"]
        == pm.fleet_personas(pm.home_key(home), home.instance, [("pot", 0)], pm.host_cpu_vendor())[
            "pot"
        ]
    )


def test_the_root_filesystems_uuid_is_read_from_the_image(tmp_path: Path) -> None:
    img = tmp_path / "root.img"
    u = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", u, str(img), "8M"], check=True)
    assert pm.ext4_uuid(img) == u
    img.write_bytes(b"\0" * 4096)
    assert pm.ext4_uuid(img) == ""
    assert pm.ext4_uuid(tmp_path / "missing") == ""
    fd = pm.memfd(b"version=1\n")
    try:
        assert os.read(fd, 100) == b"version=1\n" and os.get_inheritable(fd)
    finally:
        os.close(fd)
