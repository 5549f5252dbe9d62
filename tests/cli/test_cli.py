"""The CLI's command table and its start-up cost."""

import argparse
import importlib
import subprocess
import sys

from warden.cli import main


def test_command_table_matches_what_modules_register() -> None:
    registered: dict[str, str] = {}
    for name in main.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(name).register(sub)
        for command in sub.choices:
            registered[command] = name
    assert registered == main.COMMANDS


def test_a_command_imports_only_its_module() -> None:
    code = (
        "import sys; from warden.cli import main; main.build_parser(['ls']); "
        "print(sorted(m for m in sys.modules if m.startswith('warden.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['warden.cli.machines', 'warden.cli.main']"


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "warden", "--help"], capture_output=True, text=True, check=True
    )
    for command in main.COMMANDS:
        assert command in out.stdout
