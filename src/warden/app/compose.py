"""The daemon, its features and its API, put together: the one list of features, in order.

The daemon calls every hook of every feature in this order (and stops them in reverse). The
order is what the features need of each other, never what they import (they import nothing of
each other):

    jail       first: its before_boot gives the guest its uid and cgroup limits, which the
               honeypot's disguise server (filter programs run as that uid) reads after it
    cpu        the guest's CPU in its cpuset before the launch (independent of the others); its
               loop moves busy guests off contended CPUs
    net        taps, rules and captures before a boot; torn down after the guests at stop
    memory     admission (check_start) and room in the budget before the launch; jail, net and
               memory keep the order their boot hooks always had
    honeypot   after the jail (uid); at start it re-opens the tty logs of re-attached guests,
               which must happen before the console starts
    console    last to start: its log service closes every session log that nobody has
               re-opened by then (finalize_stale), the honeypot's tty logs among them
    snapshots  no hooks: snapshots and diffs by machine name
    forensics  timeline, evidence, recycle; its recycle policy taps the session logs the
               console makes
    storage    after the others: its watch pauses guests whose disks grow when WARDEN_HOME
               runs low; it needs nothing of the others, and starting after them it sees
               every guest re-attached
    web        the web console (warden.app.web), a front end over the others (its
               pages show the balancer's numbers and the timelines)
    cluster    only with `warden daemon --cluster`: last, so that it joins (and boots what
               etcd assigns) when everything else runs; its before_boot (owner record, disk
               lock) is the last word on a boot

The console provides the log of every terminal line (Core.logs), wired here, through the
forensics feature's tap.
"""

from dataclasses import dataclass

from warden.api.server import Api, Features
from warden.app.web import DaemonBackend, WebFeature
from warden.cluster.agent import ClusterConfig, ClusterFeature
from warden.console.feature import ConsoleFeature
from warden.cpu.feature import CpuFeature
from warden.daemon.context import Context
from warden.daemon.core import Daemon
from warden.daemon.seam import Feature
from warden.forensics.feature import ForensicsFeature
from warden.honeypot.feature import HoneypotFeature
from warden.jail.feature import JailFeature
from warden.memory.feature import MemoryFeature
from warden.net.feature import NetFeature
from warden.paths import Layout
from warden.snapshots.feature import SnapshotFeature
from warden.storage.feature import StorageFeature
from warden.web.server import WebServer


@dataclass(frozen=True)
class App:
    daemon: Daemon
    api: Api
    web: WebServer


def build(layout: Layout, cluster: ClusterConfig | None = None) -> App:
    """Read the home's state and build everything; starts nothing. With `cluster`, the
    cluster feature comes last: it joins once every other feature runs, and what it applies
    goes through every feature's checks."""
    ctx = Context.load(layout)
    jail = JailFeature(ctx)
    cpu = CpuFeature(ctx)
    net = NetFeature(ctx)
    memory = MemoryFeature(ctx)
    honeypot = HoneypotFeature(ctx)
    console = ConsoleFeature(ctx)
    snapshots = SnapshotFeature(ctx)
    forensics = ForensicsFeature(ctx)
    storage = StorageFeature(ctx)
    ctx.logs = forensics.tap(console.line_log)
    web = WebServer(DaemonBackend(ctx, console, memory, forensics))
    order: tuple[Feature, ...] = (
        jail,
        cpu,
        net,
        memory,
        honeypot,
        console,
        snapshots,
        forensics,
        storage,
        WebFeature(web),
    )
    if cluster is not None:
        order += (ClusterFeature(ctx, cluster),)
    daemon = Daemon(ctx, order)
    features = Features(
        console=console,
        jail=jail,
        net=net,
        memory=memory,
        honeypot=honeypot,
        snapshots=snapshots,
        forensics=forensics,
        web=web,
    )
    return App(daemon, Api(daemon, features), web)
