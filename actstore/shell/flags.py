"""What every command line of the project shares: `--help` text from the config dataclasses'
field docstrings, and one-line errors instead of tracebacks for what a user can fix."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actstore.store.errors import StoreError, one_line, transient

#: Exit status of a command interrupted by Ctrl-C (the shell's convention: 128 + SIGINT).
INTERRUPTED = 130


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (the project's way to document config)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_help(cls: type, name: str, extra: str = "", required: str = "required") -> str:
    """`--help` text of one flag: the field's docstring and its default."""
    doc = field_docs(cls).get(name, "").rstrip(".")
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        default: Any = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return f"{doc}{extra} ({required})".replace("%", "%%")
    if default is None and "default" in doc.lower():
        return f"{doc}{extra}".replace("%", "%%")  # the docstring says what None stands for
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{doc}{extra} (default: {shown})".replace("%", "%%")


def run_command(prog: str, command: Callable[[], int], resume_hint: str) -> int:
    """Run a command; errors a user can act on become one line on stderr and exit 2, Ctrl-C
    says how to resume and exits 130. Programming errors keep their traceback."""
    try:
        return command()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; {resume_hint}", file=sys.stderr)
        return INTERRUPTED
    except (StoreError, ValueError, KeyError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:
        if not (isinstance(e, OSError) or transient(e)):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2


@dataclass(frozen=True)
class Command:
    """One subcommand of `actstore`. actstore's own are listed in `actstore.shell.main`; the
    trainer's (train, eval, steer) are found through the `actstore.commands` entry points, so
    that actstore never imports the trainer."""

    name: str
    add_parser: Callable[[Any], None]
    """Adds the subcommand's parser to argparse's subparsers."""
    run: Callable[[dict[str, Any]], int]
    """Runs it on the parsed flags; returns the exit status."""
    resume_hint: str = "nothing was changed"
    """Said when the command is interrupted."""
