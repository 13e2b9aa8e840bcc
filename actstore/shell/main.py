"""The `actstore` command: one parser, every subcommand.

    actstore <command> ──▶ actstore.shell.store_commands   info, verify, ls, generate, toy
                       ──▶ actstore.shell.bench            bench
                       ──▶ entry points `actstore.commands` train, eval, steer (the trainer's;
                                                            actstore never imports it)
Each subcommand parses into one frozen config, then runs; errors a user can act on are one
line (`flags.run_command`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from actstore.shell import bench, store_commands
from actstore.shell.flags import Command, run_command

#: Where the plugged-in commands go in `--help`: after the store's, before bench.
PLUGIN_GROUP = "actstore.commands"
_ORDER = ("info", "verify", "ls", "generate", "toy", "train", "eval", "steer", "interpret",
          "bench")


def commands() -> list[Command]:
    """actstore's own commands and those installed packages register, in help order."""
    found = [*store_commands.COMMANDS, bench.COMMAND]
    for ep in entry_points(group=PLUGIN_GROUP):
        command = ep.load()
        if not isinstance(command, Command):
            raise TypeError(f"entry point {ep.value} ({PLUGIN_GROUP}) is not a Command")
        found.append(command)
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(found, key=lambda c: (rank.get(c.name, len(rank)), c.name))


#: Said when no package registers a command: an install made before the entry points existed.
MISSING_PLUGINS = ("train, eval and steer are missing: no package registers `actstore.commands` "
                   "entry points here; reinstall actstore (pip install -e . or pip install .)")


def build_parser(cmds: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    cmds = list(cmds) if cmds is not None else commands()
    own = {c.name for c in (*store_commands.COMMANDS, bench.COMMAND)}
    p = argparse.ArgumentParser(prog="actstore", description="The `actstore` command line. "
                                "Each subcommand parses into one frozen config, then runs.",
                                epilog=None if {c.name for c in cmds} - own else MISSING_PLUGINS)
    sub = p.add_subparsers(dest="command", required=True)
    for command in cmds:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cmds = {c.name: c for c in commands()}
    args = vars(build_parser(list(cmds.values())).parse_args(argv))
    command = cmds[args.pop("command")]
    return run_command(f"actstore {command.name}", lambda: command.run(args),
                       command.resume_hint)


if __name__ == "__main__":
    sys.exit(main())
