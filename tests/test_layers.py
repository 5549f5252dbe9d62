"""The import direction holds: every `import warden.X` in src/warden is read (an AST walk, the
imports under `if TYPE_CHECKING:` and inside functions included) and checked against the layers
of docs/architecture.md, written once here. A failure names the importing module, the line and
the import, and the rule it breaks.

Layers, top to bottom; a module imports its own package and the layers below it:

    front ends      cli, __main__  (and the API client, api.client/api.lineclient)
    composition     app            (builds the daemon with its features, starts the API)
    API             api, web       (api owns every route of the daemon; web is the browsers'
                                    server: its own routes, its own listener, its own logins)
    features        console, jail, cpu, net, memory, honeypot, snapshots, forensics, storage,
                    cluster (never each other)
    core            daemon         (features see only its seam and its pure parts)
    below           sessionlog, persona, spec, store, images, disk, uml, host, kernelbuild,
                    doctor
    base            errors, paths, units, tasks, termsafe, progress, statefile, proc, guestinput
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "warden"

FRONT, APP, API, FEATURE, CORE, BELOW, BASE = range(7)
LAYER = {
    "__main__": FRONT,
    "cli": FRONT,
    "app": APP,
    "api": API,
    # The web console is a front end the daemon serves, as the API is: it reads the features'
    # pure parts (console.screen, console.authlimit, memory.plot) and attaches to daemon.lines;
    # it sees the rest through its Backend, which the composition root (app/web.py) implements.
    # It sits beside api/, not above it: api/ serves its link route (POST /v1/web/link), so web/
    # may not import api/ (one direction between the two).
    "web": API,
    "console": FEATURE,
    "jail": FEATURE,
    "cpu": FEATURE,
    "net": FEATURE,
    "memory": FEATURE,
    "honeypot": FEATURE,
    "snapshots": FEATURE,
    "forensics": FEATURE,
    "cluster": FEATURE,
    "storage": FEATURE,
    "daemon": CORE,
    "sessionlog": BELOW,
    "persona": BELOW,  # a disguised machine's hardware: the honeypot and net features read it
    "spec": BELOW,
    "store": BELOW,
    "images": BELOW,
    "disk": BELOW,
    "uml": BELOW,
    "host": BELOW,
    "kernelbuild": BELOW,
    "doctor": BELOW,
    **dict.fromkeys(
        (
            "__init__",
            "errors",
            "paths",
            "units",
            "tasks",
            "termsafe",
            "progress",
            "statefile",
            "proc",
            "guestinput",
        ),
        BASE,
    ),
}

# Below the core, who may import whom (besides the base, which everyone may import).
BELOW_MAY = {
    "sessionlog": set(),
    "persona": {"spec"},  # fleet_of: the personas of a fleet's disguised machines
    "spec": {"uml"},  # the kernel arguments warden sets itself (uml.cmdline) are refused
    "store": set(),
    "images": set(),
    "host": set(),  # no guest knowledge: not daemon, disk, uml or spec
    "uml": {"host"},
    "disk": {"uml", "spec", "store"},  # recorded.py: the base warden.db recorded for a disk
    "kernelbuild": {"uml"},
    "doctor": {"host", "images", "uml", "disk"},  # disk: whether a snapshot can clone blocks
}

# What features may see of the core: the seam and its pure parts, never the Daemon, the
# Supervisor or the Context.
CORE_FOR_FEATURES = {
    "warden.daemon.seam",
    "warden.daemon.machine",
    "warden.daemon.lines",
    "warden.daemon.files",
    "warden.daemon.kernelout",
}

# The front end goes through the API client; these modules also work on files with no daemon
# (the named offline commands of warden.cli.main.OFFLINE), and may import what they need.
CLI_MAY = {
    # `warden daemon`, `warden up` run the daemon itself; `apply` and `up` check the fleet file
    # before they send it; `doctor` looks at the host
    "warden.cli.machines": {"app", "spec", "doctor"},
    "warden.cli.fleet": {"spec"},  # fleet add-key
    "warden.cli.web": {"spec"},  # web link --ttl 2h: the fleet file's durations (a parser)
    "warden.cli.images": {"images"},  # image build
    "warden.cli.kernel": {"kernelbuild", "uml"},  # kernel build, kernel ls
    "warden.cli.disk": {"disk"},  # disk ... --cow FILE
    "warden.cli.logs": {"sessionlog"},  # logs verify/export/replay/search, replay
    "warden.cli.mem": {"memory"},  # mem plot (reads the memory log)
    "warden.cli.net": {"net"},  # capture: the pcap record boundary (a pure reader)
    "warden.cli.forensics": {"forensics", "disk"},  # timeline with no daemon, evidence verify
    # --cluster apply/ls/hosts/drain/move talk to etcd (any host runs them, no daemon needed)
    "warden.cli.cluster": {"cluster"},
}
CLIENT = {"warden.api.client", "warden.api.lineclient"}

# Only these import aiohttp: the API (server and its clients) and the web console's server.
AIOHTTP = {"api", "web"}

# Imports that break a rule today, each with what removes it. The test fails when one of them
# is gone, so that this list only shrinks (docs/decisions/2026-12-07-structure.md).
KNOWN: dict[tuple[str, str], str] = {
    # forensics reads other features' files; their formats (memory/record.py, net/state.py,
    # net/capture.py's names) move below the features, with ws/mem's memory/ changes
    ("warden.forensics.sources", "warden.memory.record"): "formats below features",
    ("warden.forensics.sources", "warden.net.capture"): "formats below features",
    ("warden.forensics.sources", "warden.net.state"): "formats below features",
}


def _package(module: str) -> str:
    """warden.net.service -> net; warden.errors -> errors; warden -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return name.startswith("warden.") and (
        (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()
    )


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of warden or aiohttp in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_of(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for a in node.names:  # from warden.daemon import machine: warden.daemon.machine
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else base))
    return [(n, m) for n, m in out if m.split(".")[0] in ("warden", "aiohttp")]


def problem(importer: str, target: str) -> str | None:
    """What rule `importer` breaks by importing `target`, or None."""
    src = _package(importer)
    if target.split(".")[0] == "aiohttp":
        return None if src in AIOHTTP else "aiohttp is imported only in warden.api and warden.web"
    dst = _package(target)
    if src == dst:
        return None
    if src not in LAYER or dst not in LAYER:
        return f"the layer of {src if src not in LAYER else dst!r} is not in tests/test_layers.py"
    ls, ld = LAYER[src], LAYER[dst]
    if ld == BASE:
        return None
    if ls == FRONT and src == "cli":
        allowed = CLI_MAY.get(importer, set())
        if target in CLIENT or dst in allowed:
            return None
        return (
            "the CLI goes through the API client (warden.api.client); a module of an offline "
            "command names what it may import in CLI_MAY"
        )
    if ls == BASE:
        return "the base layer imports nothing of warden but the base"
    if ld < ls:
        return "an import upward (the layers: docs/architecture.md)"
    if ld == ls == FEATURE:
        return "a feature imports no other feature (share through a package below both)"
    if ld == ls == BELOW and dst not in BELOW_MAY.get(src, set()):
        return f"{src} may import only {sorted(BELOW_MAY.get(src, set())) or 'the base'} below"
    if ls == FEATURE and dst == "daemon" and target not in CORE_FOR_FEATURES:
        return "a feature sees the core through warden.daemon.seam, not its internals"
    if ls == API and target in CLIENT:
        return None
    if src == "web" and dst == "api":
        return "web imports nothing of api (api serves the web console's link route)"
    return None


def violations() -> list[tuple[str, int, str, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _module_of(path)
        for line, target in imports(path):
            why = problem(importer, target)
            if why is not None:
                found.append((importer, line, target, why))
    return found


def test_imports_point_down_the_layers() -> None:
    bad = [v for v in violations() if (v[0], v[2]) not in KNOWN]
    assert not bad, "\n" + "\n".join(
        f"{imp}:{line} imports {target}: {why}" for imp, line, target, why in bad
    )


def test_the_known_exceptions_are_still_needed() -> None:
    still = {(v[0], v[2]) for v in violations()}
    gone = sorted(set(KNOWN) - still)
    assert not gone, f"remove these from KNOWN (they are fixed): {gone}"


@pytest.mark.parametrize(
    ("importer", "target", "words"),
    [
        ("warden.host.cgroup", "warden.daemon.core", "upward"),
        ("warden.net.service", "warden.honeypot.service", "no other feature"),
        ("warden.console.logservice", "warden.daemon.supervisor", "seam"),
        ("warden.memory.balancer", "aiohttp", "aiohttp"),
        ("warden.cli.jail", "warden.host.jail", "API client"),
        ("warden.host.uids", "warden.spec.fleet", "host may import only"),
        ("warden.errors", "warden.spec.fleet", "base layer"),
        ("warden.daemon.core", "warden.api.server", "upward"),
        ("warden.web.server", "warden.api.server", "web imports nothing of api"),
        ("warden.console.concentrator", "warden.web.console", "upward"),
    ],
)
def test_the_rules_catch_what_they_name(importer: str, target: str, words: str) -> None:
    why = problem(importer, target)
    assert why is not None and words in why, why


def test_the_walk_sees_every_kind_of_import() -> None:
    # under `if TYPE_CHECKING:` (console/session.py), inside a function (host/launch.py), and
    # `from warden import X` (daemon/supervisor.py)
    assert "warden.console.concentrator" in {m for _, m in imports(SRC / "console/session.py")}
    assert "warden.host.cgroup" in {m for _, m in imports(SRC / "host/launch.py")}
    assert "warden.proc" in {m for _, m in imports(SRC / "daemon/supervisor.py")}
