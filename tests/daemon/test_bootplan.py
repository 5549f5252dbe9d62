"""daemon/bootplan.py: one boot's LaunchPlan from the spec, the files and what the features
added (pure: no file is touched, fds are plain numbers)."""

from pathlib import Path

from tests.conftest import FLEET_HEAD, machine_toml
from warden.daemon import bootplan
from warden.daemon.files import KernelLineFds, MachineFiles
from warden.daemon.kernelout import KernelOutFds
from warden.daemon.seam import BootExtras
from warden.spec import fleet as fleetmod


def inputs() -> bootplan.KernelInputs:
    return bootplan.KernelInputs(
        kernel=Path("/k/linux"),
        shim=Path("/cache/xstate.so"),
        base=Path("/home/images/minimal.img"),
        lines=(KernelLineFds("con0", 10, 11, 12, 13), KernelLineFds("ssl0", 14, 15, 16, 17)),
        out=KernelOutFds(write=20, keep=21),
        cgroup_procs=(Path("/sys/fs/cgroup/w/g/cgroup.procs"),),
    )


def spec() -> fleetmod.Machine:
    toml = machine_toml("p1", memory="96M", serial_lines=1)
    return fleetmod.parse(FLEET_HEAD + toml, "t.toml").machines[0]


def test_a_plain_boot() -> None:
    files = MachineFiles(Path("/home/machines/p1"), "p1")
    extras = BootExtras(fds=[30], kernel_args=["vec0:transport=fd,fd=30"])
    plan = bootplan.launch_plan(spec(), files, extras, inputs())
    argv = plan.argv
    assert argv[0] == "/k/linux"
    assert "mem=96M" in argv and "umid=p1" in argv
    assert "ubd0=/home/machines/p1/disk.cow,/home/images/minimal.img" in argv
    assert "con0=fd:10,fd:11" in argv and "ssl0=fd:14,fd:15" in argv
    assert argv[-1] == "vec0:transport=fd,fd=30"  # the features' arguments come last
    assert plan.keep_fds == [10, 11, 12, 13, 14, 15, 16, 17, 30, 21]
    assert bootplan.passed_fds(extras, inputs()) == [*plan.keep_fds, 20]
    assert plan.log_fd == 20 and plan.cwd == "/home/machines/p1/ctl"
    assert plan.env == {"PATH": bootplan.PATH, "LD_PRELOAD": "/cache/xstate.so"}
    assert plan.cgroup_procs == ["/sys/fs/cgroup/w/g/cgroup.procs"] and plan.jail is None


def test_a_jail_renames_what_the_kernel_sees() -> None:
    files = MachineFiles(Path("/home/machines/p1"), "p1")
    extras = BootExtras(
        env={"LD_PRELOAD": "/kernel/xstate.so", "TMPDIR": "/run/x"},
        paths={
            "/k/linux": "/kernel/linux",
            str(files.cow): "/disk/cow",
            "/home/images/minimal.img": "/disk/base",
            str(files.seed): "/disk/seed",
            str(files.ctl): ".",
            str(files.notify): "notify",
        },
        jail={"name": "p1"},
        rlimits={"nofile": (1024, 1024)},
    )
    plan = bootplan.launch_plan(spec(), files, extras, inputs())
    assert plan.argv[0] == "/kernel/linux"
    assert "ubd0=/disk/cow,/disk/base" in plan.argv and "ubd1r=/disk/seed" in plan.argv
    assert "uml_dir=." in plan.argv and "mconsole=notify:notify" in plan.argv
    assert not any("/home/" in a for a in plan.argv)  # no host path reaches the guest
    assert plan.env["LD_PRELOAD"] == "/kernel/xstate.so" and plan.env["TMPDIR"] == "/run/x"
    assert plan.jail == {"name": "p1"} and plan.rlimits == {"nofile": (1024, 1024)}


def test_the_seed_tells_the_guest_its_name_ttys_and_network() -> None:
    seed = bootplan.seed_for(spec(), {"IP": "10.0.0.2"}, fpu_safe=True)
    assert seed.hostname == "p1" and seed.network == {"IP": "10.0.0.2"} and seed.fpu_safe
    assert len(seed.lines) == 2
