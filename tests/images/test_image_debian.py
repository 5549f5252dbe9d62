"""The Debian image (`warden image build debian`): built once per machine into the shared cache,
then booted for real under UML with seed disks written by warden.images.seed.write."""

import os
import re
import select
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.rawboot import RawGuest
from warden.errors import ImageError
from warden.images import debian
from warden.images.seed import Seed, write
from warden.images.store import ImageStore
from warden.paths import Layout, layout
from warden.progress import NullProgress
from warden.uml import mconsole

GUEST_MEMORY = 256 << 20
BOOT_TIMEOUT = 180.0  # a loaded 2-core host; a guest alone reaches its login in about 8 s
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="session")
def debian_image() -> Iterator[Path]:
    """The Debian image at its default size, built into the shared cache (once per machine)."""
    lay = layout(Path(os.environ.get("WARDEN_TEST_IMAGE_HOME", "/tmp/warden-test-images")))
    lay.ensure()
    yield debian.build(ImageStore(lay), NullProgress())


def crypt(password: str) -> str:
    out = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def boot(
    home: Layout,
    image: Path,
    seed: Seed | None,
    name: str,
    extra: tuple[str, ...] = (),
    fds: tuple[int, ...] = (),
) -> RawGuest:
    """A guest over `image` with its own COW and (unless None) a seed disk; not started.
    `extra` kernel arguments may wire more lines or NICs to the inherited `fds`."""
    d = home.machine(name)
    d.mkdir(parents=True)
    seed_path = None
    if seed is not None:
        seed_path = d / "seed.img"
        write(seed_path, seed)
    return RawGuest(
        home,
        image,
        d / "disk.cow",
        memory=GUEST_MEMORY,
        seed=seed_path,
        extra=extra,
        pass_fds=fds,
    )


def read_until(sock: socket.socket, pattern: bytes, timeout: float, seen: bytearray) -> None:
    """Read `sock` into `seen` until `pattern` is in it (TimeoutError with what came)."""
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {pattern!r} within {timeout}s; got {bytes(seen[-500:])!r}")
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            data = sock.recv(65536)
            if not data:
                raise EOFError(f"line closed before {pattern!r}; got {bytes(seen[-500:])!r}")
            seen += data


def sh(g: RawGuest, command: str, timeout: float = 120.0) -> str:
    """`command`'s output on the guest's console, without terminal escapes and carriage returns."""
    out = g.run(command, timeout).encode()
    return ANSI.sub(b"", out).decode(errors="replace").replace("\r", "")


def login(g: RawGuest, user: str, password: str) -> None:
    g.expect(b" login: ", BOOT_TIMEOUT)
    g.send(f"{user}\n".encode())
    g.expect(b"Password: ", 60)
    g.send(f"{password}\n".encode())
    g.wait_prompt(60)


def system_state(g: RawGuest) -> str:
    """`systemctl is-system-running --wait`, with the failed units when it is not 'running'."""
    state = sh(g, "systemctl is-system-running --wait").split()[-1]
    if state != "running":
        failed = sh(g, "systemctl --no-pager --failed --no-legend --plain")
        return f"{state}; failed units:\n{failed}"
    return state


def host_key_fingerprints(g: RawGuest) -> list[str]:
    out = sh(g, "for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done")
    return sorted(line.split()[1] for line in out.splitlines() if "SHA256:" in line)


def debugfs(image: Path, request: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


# ---------------------------------------------------------------------------------------------
# no guest: mirror, progress, input checks, the seed's new fields


def test_mirror_from_one_line_and_deb822_sources(tmp_path: Path) -> None:
    lst = tmp_path / "sources.list"
    lst.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://other.example/debian trixie main\n"
        "deb http://contrib-only.example/debian bookworm contrib\n"
    )
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    (d / "b.list").write_text("deb [arch=amd64] http://later.example/debian bookworm main\n")
    assert debian.find_mirror("bookworm", lst, d) == "http://mirror.example/debian"
    assert debian.find_mirror("trixie", lst, d) == "http://other.example/debian"
    (d / "a.sources").unlink()
    assert debian.find_mirror("bookworm", lst, d) == "http://later.example/debian"


def test_no_mirror_is_a_clear_error(tmp_path: Path) -> None:
    lst = tmp_path / "sources.list"
    lst.write_text("deb http://ftp.example/debian bullseye main\n")
    with pytest.raises(ImageError, match=r"no Debian mirror for 'bookworm'.*sources\.list"):
        debian.find_mirror("bookworm", lst, tmp_path / "missing.d")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def step(self, message: str) -> None:
        self.events.append(("step", message))

    def total(self, n: float) -> None:
        self.events.append(("total", n))

    def advance(self, n: float = 1) -> None:
        self.events.append(("advance", n))


# Lines as debootstrap 1.0.128 prints them (trailing blanks included).
DEBOOTSTRAP_OUTPUT = """\
I: Target architecture can be executed
I: Retrieving InRelease 
I: Checking Release signature
I: Retrieving Packages 
I: Validating Packages 
I: Resolving dependencies of required packages...
I: Resolving dependencies of base packages...
I: Checking component main on http://deb.debian.org/debian...
I: Retrieving adduser 3.134
I: Validating adduser 3.134
I: Retrieving apt 2.6.1
I: Validating apt 2.6.1
I: Retrieving udev 252.39-1~deb12u2
I: Validating udev 252.39-1~deb12u2
I: Chosen extractor for .deb packages: dpkg-deb
I: Extracting adduser...
I: Extracting apt...
I: Installing core packages...
I: Unpacking required packages...
I: Unpacking adduser...
I: Unpacking apt...
I: Configuring required packages...
I: Configuring adduser...
I: Configuring apt...
I: Unpacking the base system...
I: Unpacking udev...
I: Configuring the base system...
I: Configuring udev...
I: Base system installed successfully.
warden: installing warden's units and the user admin
"""


def test_debootstrap_lines_become_progress_steps(tmp_path: Path) -> None:
    (tmp_path / "debootstrap").mkdir()
    (tmp_path / "debootstrap" / "required").write_text("adduser apt\n")
    (tmp_path / "debootstrap" / "base").write_text("udev\n")
    rec = Recorder()
    feed = debian.DebootstrapProgress(rec, tmp_path)
    for line in DEBOOTSTRAP_OUTPUT.splitlines(keepends=True):
        feed.feed(line)
    assert rec.events == [
        ("step", "fetching the package index"),
        ("step", "resolving dependencies"),
        ("step", "downloading packages"),
        ("advance", 1),
        ("advance", 1),
        ("advance", 1),
        ("step", "extracting the required packages"),
        ("total", 2),
        ("advance", 1),
        ("advance", 1),
        ("step", "unpacking the required packages"),
        ("total", 2),
        ("advance", 1),
        ("advance", 1),
        ("step", "configuring the required packages"),
        ("total", 2),
        ("advance", 1),
        ("advance", 1),
        ("step", "unpacking the base system"),
        ("total", 1),
        ("advance", 1),
        ("step", "configuring the base system"),
        ("total", 1),
        ("advance", 1),
        ("step", "base system installed"),
        ("step", "installing warden's units and the user admin"),
    ]
    assert feed.tail[-1] == "warden: installing warden's units and the user admin"


@pytest.mark.parametrize("size", [64 << 20, debian.MIN_SIZE - 1024, (1 << 30) + 1])
def test_bad_size_is_refused_before_any_work(home: Layout, size: int) -> None:
    cache = home.cache / "images"
    before = sorted(cache.iterdir()) if cache.exists() else []
    with pytest.raises(ImageError, match=r"give a whole number of KiB, at least 512M"):
        debian.build(ImageStore(home), NullProgress(), size=size)
    after = sorted(cache.iterdir()) if cache.exists() else []
    assert after == before
    assert not (home.images / "debian.img").exists()


def build_leftovers(home: Layout) -> list[str]:
    """Whatever a Debian build may leave: staging dirs, partial images, its tmpfs mounts."""
    cache = home.cache / "images"
    left = [p.name for p in cache.glob(".debian-build-*")]
    left += [p.name for p in cache.glob(".debian-*.partial*")]
    left += [p.name for p in cache.glob(".debian-*.lock")]  # one .debian.lock, not one per key
    left += [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if "debian-bu" in m]
    return left


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_build_is_a_clear_error_and_leaves_nothing(home: Layout) -> None:
    mirror = f"http://127.0.0.1:{refused_port()}/debian"
    with pytest.raises(ImageError) as err:
        debian.build(ImageStore(home), NullProgress(), size=debian.MIN_SIZE, mirror=mirror)
    text = str(err.value)
    assert f"building the Debian image from {mirror} failed while fetching the package index" in (
        text
    )
    assert "E: Failed getting release file" in text
    assert build_leftovers(home) == []
    key = debian.input_key(debian.MIN_SIZE, mirror)
    assert not ImageStore(home).cached("debian", key).exists()
    assert list(home.images.iterdir()) == []


def test_killed_build_leaves_no_process_and_no_mount(home: Layout, tmp_path: Path) -> None:
    """SIGKILL of warden mid-download: the namespace's processes die with it, its tmpfs goes
    with the namespace, and the next build removes the staging directory."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        mirror = f"http://127.0.0.1:{port}/debian"  # accepts, never answers: debootstrap waits
        code = (
            "from warden.images import debian; from warden.images.store import ImageStore; "
            "from warden.paths import layout; from warden.progress import NullProgress; "
            f"debian.build(ImageStore(layout()), NullProgress(), {debian.MIN_SIZE}, {mirror!r})"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
        try:
            server.settimeout(120)
            conn, _ = server.accept()  # wget, inside the build's namespaces
            conn.settimeout(60)
            request = conn.recv(65536)
        finally:
            proc.kill()
            proc.wait()
        with conn:
            assert request.startswith(b"GET /debian/dists/bookworm/")
            while conn.recv(65536):  # EOF: the download's process is gone
                pass
    for _ in range(100):
        left = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True).stdout
        if not left:
            break
        time.sleep(0.1)
    assert left == b"", "build processes outlived the build"
    assert [m for m in build_leftovers(home) if not m.startswith(".debian-build-")] == []
    with pytest.raises(ImageError, match="fetching the package index"):
        debian.build(
            ImageStore(home),
            NullProgress(),
            size=debian.MIN_SIZE,
            mirror=f"http://127.0.0.1:{refused_port()}/debian",
        )
    assert build_leftovers(home) == []


def read_seed_env(seed_img: Path) -> dict[str, str]:
    """Source seed.env from the seed disk with a POSIX shell, as the guest does."""
    env_text = debugfs(seed_img, "cat /seed.env")
    script = env_text + 'for v in ${!WARDEN_*}; do printf "%s=%s\\0" "$v" "${!v}"; done\n'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if item)


def test_seed_admin_hash_and_ssh_keys(tmp_path: Path) -> None:
    h = crypt("s3cret")
    keys = ("ssh-ed25519 AAAAC3Nza1 alice@example", 'from="10.0.0.0/8" ssh-rsa AAAAB3Nz bob')
    write(tmp_path / "seed.img", Seed("web1", admin_hash=h, ssh_keys=keys))
    env = read_seed_env(tmp_path / "seed.img")
    assert env["WARDEN_ADMIN_HASH"] == h
    assert env["WARDEN_SSH_KEYS"].split("\n") == list(keys)
    assert env["WARDEN_HOSTNAME"] == "web1"
    # without them, seed.env is what it was before these fields existed
    write(tmp_path / "old.img", Seed("web1", root_hash=h))
    assert debugfs(tmp_path / "old.img", "cat /seed.env") == (
        f"WARDEN_HOSTNAME=web1\nWARDEN_LINES=tty0\nWARDEN_ROOT_HASH={shlex.quote(h)}\n"
    )


@pytest.mark.parametrize(
    ("seed", "what"),
    [
        (Seed("web1", admin_hash="$6$x$y:z"), "admin_hash"),
        (Seed("web1", admin_hash="$6$x$y\nroot::0:0"), "admin_hash"),
        (Seed("web1", ssh_keys=("ssh-ed25519 AAAA a\nssh-rsa BBBB b",)), r"ssh_keys\[0\]"),
        (Seed("web1", ssh_keys=("ssh-ed25519 AAAA a", "  ")), r"ssh_keys\[1\]"),
    ],
)
def test_seed_refuses_values_that_would_corrupt_the_guest(
    tmp_path: Path, seed: Seed, what: str
) -> None:
    with pytest.raises(ImageError, match=rf"seed: {what} must be"):
        write(tmp_path / "seed.img", seed)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the built image


def test_image_is_cached_and_holds_nothing_machine_specific(
    debian_image: Path, home: Layout
) -> None:
    cached = home.cache / "images" / debian_image.name
    st = cached.stat()
    assert st.st_mode & 0o777 == 0o444
    again = debian.build(ImageStore(home), NullProgress())  # another home, same cache
    assert again.name == debian_image.name
    assert cached.stat().st_ino == st.st_ino and cached.stat().st_mtime == st.st_mtime
    assert (home.images / "debian.img").resolve() == again
    # each guest makes its own machine-id and SSH host keys; per-guest files point into /run
    assert "ssh_host_" not in debugfs(debian_image, "ls /etc/ssh")
    assert debugfs(debian_image, "cat /etc/machine-id") == ""
    for path, target in (
        ("/etc/hostname", "/run/warden/hostname"),
        ("/etc/resolv.conf", "/run/warden/resolv.conf"),
    ):
        assert f'Fast link dest: "{target}"' in debugfs(debian_image, f"stat {path}")
    assert "admin:x:1000:1000" in debugfs(debian_image, "cat /etc/passwd")
    assert re.search(r"^sudo:x:27:admin$", debugfs(debian_image, "cat /etc/group"), re.M)


# ---------------------------------------------------------------------------------------------
# real guests

guest = pytest.mark.guest


@guest
@pytest.mark.timeout(900)
def test_root_password_login_hostname_and_a_running_system(
    debian_image: Path, home: Layout, record_property: Callable[[str, object], None]
) -> None:
    with boot(home, debian_image, Seed("deb-pw", root_hash=crypt("rootpw")), "deb-pw") as g:
        g.expect(b"deb-pw login: ", BOOT_TIMEOUT)
        g.send(b"root\n")
        g.expect(b"Password: ", 60)
        g.send(b"wrong\n")
        g.expect(b"Login incorrect", 60)
        login(g, "root", "rootpw")
        assert system_state(g) == "running"
        assert sh(g, "id -un; hostname; cat /etc/hostname").split() == ["root", "deb-pw", "deb-pw"]
        assert sh(g, "systemctl is-active ssh.service console-getty.service").split() == [
            "active",
            "active",
        ]
        assert len(host_key_fingerprints(g)) == 3  # rsa, ecdsa, ed25519, made at first boot
        virt = sh(g, "virt-what").split()
        record_property("virt_what", " ".join(virt))
        print(f"virt-what in a Debian guest: {virt}", file=sys.stderr)
        assert virt[0] == "uml"  # /proc/cpuinfo says "User Mode Linux"; the honeypot hides it


@guest
@pytest.mark.timeout(900)
def test_no_root_hash_gives_a_root_shell_and_each_guest_its_own_host_keys(
    debian_image: Path, home: Layout
) -> None:
    with ExitStack() as stack:
        guests = [
            stack.enter_context(boot(home, debian_image, Seed(f"deb-{i}"), f"deb-{i}"))
            for i in (1, 2)
        ]
        keys = []
        ids = []
        for i, g in enumerate(guests, 1):
            g.expect(b"(automatic login)", BOOT_TIMEOUT)
            g.wait_prompt(60)
            assert system_state(g) == "running"
            assert sh(g, "id -un; hostname").split() == ["root", f"deb-{i}"]
            assert sh(g, "systemctl is-active ssh.service").strip() == "active"
            keys.append(host_key_fingerprints(g))
            ids.append(sh(g, "cat /etc/machine-id").strip())
        assert len(keys[0]) == len(keys[1]) == 3
        assert not set(keys[0]) & set(keys[1])
        assert ids[0] != ids[1] and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@guest
@pytest.mark.timeout(900)
def test_admin_password_sudo_seed_ssh_keys_and_network(
    debian_image: Path, home: Layout, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "warden-test", "-f", str(key)],
        check=True,
    )
    seed = Seed(
        "deb-admin",
        root_hash=crypt("rootpw"),
        admin_hash=crypt("adminpw"),
        ssh_keys=(key.with_suffix(".pub").read_text().strip(),),
        network={
            "WARDEN_IP": "10.9.8.7/24",
            "WARDEN_GATEWAY": "10.9.8.1",
            "WARDEN_DNS": "10.9.8.2",
            "WARDEN_IP_1": "10.7.0.5/16",
        },
    )
    # two NICs, each on a datagram socketpair whose other end this test holds (no traffic leaves)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    nics = tuple(f"vec{i}:transport=fd,fd={theirs.fileno()}" for i, (_, theirs) in enumerate(pairs))
    fds = tuple(theirs.fileno() for _, theirs in pairs)
    with ExitStack() as stack:
        for pair in pairs:
            for sock in pair:
                stack.enter_context(sock)
        g = stack.enter_context(boot(home, debian_image, seed, "deb-admin", nics, fds))
        login(g, "admin", "adminpw")
        assert system_state(g) == "running"
        assert sh(g, "id -un").strip() == "admin"
        assert sh(g, "echo adminpw | sudo -S -p '' id -un 2>/dev/null").strip() == "root"
        # the seed's key logs in as admin and as root (over the guest's own loopback)
        g.send(f"cat > ~/k <<'EOF'\n{key.read_text()}EOF\n".encode())
        g.wait_prompt(60)
        ssh = "ssh -i ~/k -o BatchMode=yes -o StrictHostKeyChecking=no -o LogLevel=ERROR"
        assert sh(g, f"chmod 600 ~/k; {ssh} admin@localhost id -un").strip() == "admin"
        assert sh(g, f"{ssh} root@localhost id -un").strip() == "root"
        # vecN became ethN, with the seed's addresses; eth0 has the default route
        addrs = sh(g, "ip -o -4 addr show | awk '{print $2, $4}'").split("\n")
        why = ""
        if [a for a in addrs if a and not a.startswith("lo ")] != [
            "eth0 10.9.8.7/24",
            "eth1 10.7.0.5/16",
        ]:
            why = sh(
                g,
                "cat /run/warden/interfaces; ip -o link; systemctl --no-pager status "
                "networking ifup@eth0 ifup@eth1 2>&1 | tail -40",
            )
        assert [a for a in addrs if a and not a.startswith("lo ")] == [
            "eth0 10.9.8.7/24",
            "eth1 10.7.0.5/16",
        ], why
        assert sh(g, "ip route show default").split()[:5] == [
            "default",
            "via",
            "10.9.8.1",
            "dev",
            "eth0",
        ]
        # IPv4 only (Debian's UML kernel has no IPv6; seed.sh switches it off where there is)
        assert sh(g, "ip -o -6 addr show | wc -l").strip() == "0"
        assert sh(g, "cat /etc/resolv.conf").strip() == "nameserver 10.9.8.2"


@guest
@pytest.mark.timeout(900)
def test_a_wired_serial_line_gets_a_login(debian_image: Path, home: Layout) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    seed = Seed("deb-serial", lines=("tty0", "ttyS0"), root_hash=crypt("rootpw"))
    n = theirs.fileno()
    with ours, boot(home, debian_image, seed, "deb-serial", (f"ssl0=fd:{n},fd:{n}",), (n,)) as g:
        theirs.close()  # the kernel has its own copy
        seen = bytearray()
        read_until(ours, b"deb-serial login: ", BOOT_TIMEOUT, seen)
        ours.sendall(b"root\n")
        read_until(ours, b"Password: ", 60, seen)
        ours.sendall(b"rootpw\n")
        read_until(ours, b"root@deb-serial:~# ", 60, seen)
        ours.sendall(b"echo serial-$(tty)-$((6*7))\n")
        read_until(ours, b"serial-/dev/ttyS0-42", 60, seen)
        # con0 has its own login all the while
        login(g, "root", "rootpw")
        assert sh(g, "tty").strip() == "/dev/console"
        assert sh(g, "systemctl is-active warden-getty@ttyS0.service").strip() == "active"


@guest
@pytest.mark.timeout(900)
def test_ctrl_alt_del_powers_the_guest_off(debian_image: Path, home: Layout) -> None:
    """warden's stop is mconsole `cad`: the guest shuts down cleanly and the kernel exits."""
    with boot(home, debian_image, Seed("deb-cad"), "deb-cad") as g:
        g.expect(b"(automatic login)", BOOT_TIMEOUT)
        g.wait_prompt(60)
        assert system_state(g) == "running"
        target = g.uml_dir / g.name / "mconsole"
        with mconsole.Client(target, home.machine("deb-cad") / "reply") as mc:
            mc.request("cad")
        assert g.wait_exit(120) == 0
        while g.read(1):  # what the guest wrote before it went
            pass
        assert b"systemd-shutdown[1]: Powering off." in g.output  # not "Rebooting."


@guest
@pytest.mark.timeout(900)
def test_without_a_seed_disk_the_guest_uses_defaults(debian_image: Path, home: Layout) -> None:
    with boot(home, debian_image, None, "deb-noseed") as g:
        g.expect(b"(automatic login)", BOOT_TIMEOUT)
        g.wait_prompt(60)
        assert system_state(g) == "running"
        assert sh(g, "id -un; hostname").split() == ["root", "localhost"]
        assert "no seed disk" in sh(g, "journalctl --no-pager -b -u warden-seed -o cat")
