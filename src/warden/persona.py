"""The physical machine a disguised guest pretends to be (docs/formats/persona.md).

Each machine of a fleet with a `disguise` gets a stable persona: hostname, server model and
DMI identification, PCI functions, a disk with a model, serial and firmware, NICs with a real
vendor's OUI. `derive()` is pure: the same seed gives the same persona. A machine's seed is
HMAC-SHA256(the home's persona key, "instance/machine"), the key made once per home
(WARDEN_HOME/keys/persona.key), so a persona survives reboots, resets and re-creation under
the same name, and cannot be guessed from the machine's name. `fleet_personas()` gives every
disguised machine of a fleet its persona and makes sure no two share a hostname, MAC, serial
or UUID (a collision re-derives the later machine, by name order, with the next counter).
`kernel_text()` is what the honeypot kernel reads from `persona_fd=` at boot.
"""

import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from warden import statefile
from warden.paths import Layout

if TYPE_CHECKING:
    from warden.spec.fleet import Fleet

KEY_FILE = "persona.key"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PciFunc:
    slot: str  # 0000:00:17.0
    vendor: int
    device: int
    sub_vendor: int
    sub_device: int
    cls: int  # class, subclass, prog-if
    revision: int

    def line(self) -> str:
        return (
            f"{self.slot} {self.vendor:04x}:{self.device:04x} "
            f"{self.sub_vendor:04x}:{self.sub_device:04x} {self.cls:06x} {self.revision:02x}"
        )


@dataclass(frozen=True)
class Disk:
    model: str
    serial: str
    rev: str
    pci: str  # the SATA controller it hangs on


@dataclass(frozen=True)
class Nic:
    mac: str
    driver: str
    firmware: str
    pci: str


@dataclass(frozen=True)
class Persona:
    hostname: str
    dmi: dict[str, str]
    pci: tuple[PciFunc, ...]
    disk: Disk
    nics: tuple[Nic, ...]
    cmdline: str

    def unique_values(self) -> list[str]:
        """What no two machines of a fleet may share."""
        return [
            "host:" + self.hostname,
            "serial:" + self.dmi["product_serial"],
            "uuid:" + self.dmi["product_uuid"],
            "disk:" + self.disk.serial,
            *("mac:" + n.mac for n in self.nics),
        ]


# ---- the catalogue: real server models, their chipsets, NICs and disks ---------------------


@dataclass(frozen=True)
class Model:
    cpu_vendor: str  # GenuineIntel or AuthenticAMD
    sys_vendor: str
    product: str
    family: str
    sku: str
    board: str
    bios_vendor: str
    bios_versions: tuple[tuple[str, str], ...]  # (version, date mm/dd/yyyy)
    sub_vendor: int  # PCI subsystem vendor (the server maker)
    sub_device: int
    chipset: tuple[tuple[str, int, int, int, int], ...]  # slot, vendor, device, class, rev
    sata: str  # the slot of the SATA controller among the chipset's functions
    nic_slot: str
    nic: tuple[int, int, int, str, str]  # vendor, device, rev, driver, firmware
    ouis: tuple[str, ...]  # the NIC's MAC prefixes (IEEE registrations of its maker)
    serial_style: str  # dell, smc


INTEL_C620 = (
    ("0000:00:00.0", 0x8086, 0x2020, 0x060000, 0x04),  # Sky Lake-E DMI3 registers
    ("0000:00:14.0", 0x8086, 0xA1AF, 0x0C0330, 0x09),  # C620 USB 3.0 xHCI
    ("0000:00:16.0", 0x8086, 0xA1BA, 0x078000, 0x09),  # C620 MEI
    ("0000:00:17.0", 0x8086, 0xA182, 0x010601, 0x09),  # C620 SATA (AHCI)
    ("0000:00:1f.0", 0x8086, 0xA1C1, 0x060100, 0x09),  # C621 LPC/eSPI
    ("0000:00:1f.4", 0x8086, 0xA1A3, 0x0C0500, 0x09),  # C620 SMBus
)
AMD_EPYC = (
    ("0000:00:00.0", 0x1022, 0x1480, 0x060000, 0x00),  # Starship/Matisse root complex
    ("0000:00:14.0", 0x1022, 0x790B, 0x0C0500, 0x61),  # FCH SMBus
    ("0000:00:14.3", 0x1022, 0x790E, 0x060100, 0x51),  # FCH LPC bridge
    ("0000:00:18.0", 0x1022, 0x1490, 0x060000, 0x00),  # Data fabric function 0
    ("0000:03:00.2", 0x1022, 0x7901, 0x010601, 0x51),  # FCH SATA (AHCI)
)
DELL_OUIS = ("18:66:da", "24:6e:96", "b0:83:fe", "d4:ae:52", "f8:bc:12", "4c:d9:8f")
SMC_OUIS = ("ac:1f:6b", "0c:c4:7a", "3c:ec:ef", "00:25:90")
TG3 = (0x14E4, 0x165F, 0x00, "tg3", "FFV21.80.8 bc 5720-v1.39")  # Broadcom BCM5720
IGB = (0x8086, 0x1521, 0x01, "igb", "1.63, 0x800009fa")  # Intel I350

MODELS = (
    Model(
        "GenuineIntel", "Dell Inc.", "PowerEdge R640", "PowerEdge",
        "SKU=0716;ModelName=PowerEdge R640", "0W23H8", "Dell Inc.",
        (("2.17.1", "11/14/2022"), ("2.19.1", "06/04/2023")),
        0x1028, 0x0716, INTEL_C620, "0000:00:17.0", "0000:01:00.0", TG3, DELL_OUIS, "dell",
    ),
    Model(
        "GenuineIntel", "Supermicro", "SYS-6019P-WTR", "SMC X11", "To be filled by O.E.M.",
        "X11DDW-L", "American Megatrends Inc.", (("3.6", "06/09/2022"), ("3.8a", "10/26/2022")),
        0x15D9, 0x0926, INTEL_C620, "0000:00:17.0", "0000:18:00.0", IGB, SMC_OUIS, "smc",
    ),
    Model(
        "AuthenticAMD", "Dell Inc.", "PowerEdge R6515", "PowerEdge",
        "SKU=0912;ModelName=PowerEdge R6515", "0R4CNN", "Dell Inc.",
        (("2.11.4", "03/22/2023"), ("2.13.3", "09/12/2023")),
        0x1028, 0x0912, AMD_EPYC, "0000:03:00.2", "0000:01:00.0", TG3, DELL_OUIS, "dell",
    ),
    Model(
        "AuthenticAMD", "Supermicro", "AS -1014S-WTRT", "Super Server", "To be filled by O.E.M.",
        "H12SSW-NT", "American Megatrends Inc.", (("2.4", "04/28/2022"), ("2.6", "05/19/2023")),
        0x15D9, 0x1B95, AMD_EPYC, "0000:03:00.2", "0000:41:00.0", IGB, SMC_OUIS, "smc",
    ),
)  # fmt: skip

# (model, firmware revision, serial prefix, serial length) of datacenter SATA SSDs
DISKS = (
    ("INTEL SSDSC2KB480G8", "XCV10132", "PHYG", 18),
    ("SAMSUNG MZ7LH480HAHQ-00005", "HXT7904Q", "S45PNA0", 14),
    ("Micron_5300_MTFDDAK480TDS", "D3MU001", "2034", 12),
)

ROLES = ("web", "app", "db", "mail", "files", "backup", "build", "git", "vpn", "proxy", "mon",
         "api", "cache", "ldap", "dev", "stage", "erp", "crm", "wiki", "ci")  # fmt: skip
SITES = ("fra", "ams", "lon", "par", "nyc", "dal", "sfo", "sin", "muc", "ber", "vie", "zrh")
HEX = "0123456789abcdef"
SERVICE_TAG = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # Dell service tags: no vowels


class _Stream:
    """Deterministic choices from a seed (HMAC-SHA256 in counter mode)."""

    def __init__(self, seed: bytes, label: str):
        self.seed, self.label, self.n, self.buf = seed, label, 0, b""

    def bytes(self, k: int) -> bytes:
        while len(self.buf) < k:
            block = hmac.new(self.seed, f"{self.label}/{self.n}".encode(), hashlib.sha256)
            self.buf += block.digest()
            self.n += 1
        out, self.buf = self.buf[:k], self.buf[k:]
        return out

    def below(self, n: int) -> int:
        return int.from_bytes(self.bytes(8), "big") % n

    def pick(self, options: tuple[str, ...] | str) -> str:
        return options[self.below(len(options))]

    def chars(self, alphabet: str, k: int) -> str:
        return "".join(self.pick(alphabet) for _ in range(k))


def derive(
    seed: bytes,
    cpu_vendor: str = "GenuineIntel",
    nics: int = 1,
    root_uuid: str = "",
    release: str = "6.1.176",
) -> Persona:
    """The persona of a seed (pure). `root_uuid`: the root filesystem's UUID, for the command
    line; `release`: the kernel's `uname -r`, for BOOT_IMAGE."""
    s = _Stream(seed, "persona")
    models = tuple(m for m in MODELS if m.cpu_vendor == cpu_vendor) or MODELS
    m = models[s.below(len(models))]
    bios, bios_date = m.bios_versions[s.below(len(m.bios_versions))]
    if m.serial_style == "dell":
        serial = s.chars(SERVICE_TAG, 7)
        board_serial = f"CNFCP00{s.chars('0123456789', 2)}{s.chars(SERVICE_TAG, 5)}"
        uid = uuid.UUID(bytes=b"LLED" + s.bytes(12))  # Dell's UUIDs begin 4c4c4544 ("DELL")
    else:
        serial = "S" + s.chars("0123456789", 3) + "X" + s.chars("0123456789", 8)
        board_serial = "NM" + s.chars("ABCDEFGHJKLMNPRSTUVWXYZ", 2) + s.chars("0123456789", 7)
        uid = uuid.UUID(bytes=s.bytes(16), version=4)
    dmi = {
        "bios_vendor": m.bios_vendor,
        "bios_version": bios,
        "bios_date": bios_date,
        "bios_release": ".".join(bios.split(".")[:2]) if "." in bios else bios,
        "sys_vendor": m.sys_vendor,
        "product_name": m.product,
        "product_version": "" if m.serial_style == "dell" else "0123456789",
        "product_serial": serial,
        "product_uuid": str(uid),
        "product_sku": m.sku,
        "product_family": m.family,
        "board_vendor": m.sys_vendor,
        "board_name": m.board,
        "board_version": "A05" if m.serial_style == "dell" else "1.02",
        "board_serial": board_serial,
        "board_asset_tag": "" if m.serial_style == "dell" else "To be filled by O.E.M.",
        "chassis_vendor": m.sys_vendor,
        "chassis_type": "23",  # rack mount chassis
        "chassis_version": "" if m.serial_style == "dell" else "0123456789",
        "chassis_serial": serial,
        "chassis_asset_tag": "" if m.serial_style == "dell" else "To be filled by O.E.M.",
    }
    pci = [
        PciFunc(slot, ven, dev, m.sub_vendor, m.sub_device, cls, rev)
        for slot, ven, dev, cls, rev in m.chipset
    ]
    nic_ven, nic_dev, nic_rev, driver, firmware = m.nic
    nic_list = []
    for i in range(nics):
        bus, rest = m.nic_slot.rsplit(".", 1)
        slot = f"{bus}.{int(rest) + i}"
        pci.append(PciFunc(slot, nic_ven, nic_dev, m.sub_vendor, m.sub_device, 0x020000, nic_rev))
        oui = s.pick(m.ouis)
        tail = s.bytes(3)
        mac = oui + ":" + ":".join(f"{b:02x}" for b in tail)
        nic_list.append(Nic(mac, driver, firmware, slot))
    dmodel, drev, dprefix, dlen = DISKS[s.below(len(DISKS))]
    dserial = dprefix + s.chars("0123456789ABCDEFGHJKLMNPQRSTVWXYZ", dlen - len(dprefix))
    disk = Disk(dmodel, dserial, drev[-4:], m.sata)  # SCSI INQUIRY shows 4 characters
    hostname = f"{s.pick(SITES)}-{s.pick(ROLES)}{1 + s.below(24):02d}"
    cmdline = boot_cmdline(root_uuid, release)
    return Persona(hostname, dmi, tuple(sorted(pci, key=lambda f: f.slot)), disk,
                   tuple(nic_list), cmdline)  # fmt: skip


def boot_cmdline(root_uuid: str = "", release: str = "6.1.176") -> str:
    """The command line a physical Debian server booted by GRUB shows (net.ifnames=0: its
    NICs keep the kernel's ethN names, as on many servers)."""
    root = f"root=UUID={root_uuid}" if root_uuid else "root=/dev/sda"
    return f"BOOT_IMAGE=/boot/vmlinuz-{release} {root} ro net.ifnames=0 quiet"


def machine_seed(key: bytes, instance: str, machine: str, counter: int = 0) -> bytes:
    label = f"{instance}/{machine}" + (f"#{counter}" if counter else "")
    return hmac.new(key, label.encode(), hashlib.sha256).digest()


def fleet_personas(
    key: bytes,
    instance: str,
    machines: list[tuple[str, int]],  # (name, NIC count) of the disguised machines
    cpu_vendor: str = "GenuineIntel",
    root_uuids: dict[str, str] | None = None,
) -> dict[str, Persona]:
    """Every disguised machine's persona, no two sharing a hostname, MAC, serial or UUID."""
    taken: set[str] = set()
    out = {}
    for name, nics in sorted(machines):
        counter = 0
        while True:
            p = derive(machine_seed(key, instance, name, counter), cpu_vendor, nics,
                       (root_uuids or {}).get(name, ""))  # fmt: skip
            values = p.unique_values()
            if not taken.intersection(values) and len(set(values)) == len(values):
                break
            counter += 1
        taken.update(values)
        out[name] = p
    return out


def kernel_text(p: Persona) -> bytes:
    """What the honeypot kernel reads from persona_fd= (docs/formats/persona.md)."""
    lines = [f"version={FORMAT_VERSION}", f"cmdline={p.cmdline}"]
    lines += [f"dmi.{k}={v}" for k, v in p.dmi.items()]
    lines += [f"pci={f.line()}" for f in p.pci]
    lines += [f"disk.0.pci={p.disk.pci}", f"disk.0.model={p.disk.model}",
              f"disk.0.serial={p.disk.serial}", f"disk.0.rev={p.disk.rev}"]  # fmt: skip
    for i, n in enumerate(p.nics):
        lines += [f"nic.{i}.pci={n.pci}", f"nic.{i}.driver={n.driver}",
                  f"nic.{i}.firmware={n.firmware}"]  # fmt: skip
    for line in lines:
        if "\n" in line or "\0" in line:
            raise ValueError(f"persona line {line!r}: no line breaks or NULs")
    return ("\n".join(lines) + "\n").encode()


# ---- the host side ---------------------------------------------------------------------------


def home_key(layout: Layout) -> bytes:
    """The home's persona key, made (32 random bytes, mode 0600) the first time it is asked."""
    path = layout.keys / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    layout.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    return statefile.create_once(path, os.urandom(32), 0o600)  # the first writer wins


_fleets: dict[tuple[str, str, str, tuple[tuple[str, int], ...]], dict[str, Persona]] = {}


def fleet_of(layout: Layout, fleet: "Fleet") -> dict[str, Persona]:
    """The personas of a fleet's disguised machines in this home (cached per fleet content).
    The net service (MACs) and the honeypot service (the kernel's persona) both ask here, so
    they always agree."""
    machines = tuple(sorted((m.name, len(m.nics)) for m in fleet.machines if m.disguise))
    cache_key = (str(layout.home), layout.instance, host_cpu_vendor(), machines)
    if cache_key not in _fleets:
        _fleets.clear()
        _fleets[cache_key] = fleet_personas(
            home_key(layout), layout.instance, list(machines), cache_key[2]
        )
    return _fleets[cache_key]


def host_cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "GenuineIntel"


def ext4_uuid(image: Path) -> str:
    """The UUID of the ext4 filesystem in `image` (superblock at 1024, s_uuid at +0x68)."""
    try:
        with image.open("rb") as f:
            f.seek(1024 + 0x38)
            magic = f.read(2)
            f.seek(1024 + 0x68)
            raw = f.read(16)
    except OSError:
        return ""
    if magic != b"\x53\xef" or len(raw) != 16:
        return ""
    return str(uuid.UUID(bytes=raw))


def memfd(text: bytes) -> int:
    """An inheritable memfd holding `text`, at offset 0, for the kernel's persona_fd=."""
    fd = os.memfd_create("persona", 0)
    os.write(fd, text)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd
