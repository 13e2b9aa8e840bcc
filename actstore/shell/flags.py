"""What every command line of the project shares: flags generated from the config dataclasses
(`add_fields`: each field's type, default, Literal choices and docstring are its flag's, declared
once), and one-line errors instead of tracebacks for what a user can fix."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import sys
import textwrap
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, TypeVar, Union, get_args, get_origin, get_type_hints

from actstore.store.errors import StoreError, interrupted, one_line, transient

#: Exit status of a command interrupted by Ctrl-C (the shell's convention: 128 + SIGINT).
INTERRUPTED = 130


@functools.cache  # a class's source is parsed once, not once per flag
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
    default = _default(next(f for f in dataclasses.fields(cls) if f.name == name))
    if default is dataclasses.MISSING:
        return f"{doc}{extra} ({required})".replace("%", "%%")
    if (default is None or default == ()) and "default" in doc.lower():
        # the docstring says what None (or nothing) stands for
        return f"{doc}{extra}".replace("%", "%%")
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{doc}{extra} (default: {shown})".replace("%", "%%")


class Flag(TypedDict, total=False):
    """How one field's flag differs from the one `add_fields` makes of it: said once, beside the
    command's other CLI-only wording (the configs sit below the shell and know no argparse)."""

    names: tuple[str, ...]
    """Option strings (default `--field-name`, or `--no-field-name` for a bool that defaults to
    True); a name without dashes is a positional."""
    repeat: bool
    """A tuple field takes one value per flag, the flag repeated, not several after one flag."""
    extra: str
    """Said in --help after the docstring, before the default."""
    help: str
    """--help text instead of the docstring's."""


def add_fields(parser: argparse.ArgumentParser, cls: type, *, only: Sequence[str] | None = None,
               skip: Collection[str] = (), overrides: Mapping[str, Flag] | None = None,
               overlay: bool = False, required: str = "required") -> None:
    """One flag per field of the dataclass `cls` (`only` these, in this order; else every field
    but `skip`, in declaration order): the field's type is `type=`, a Literal's values
    `choices=`, a tuple `nargs="+"`, `X | None` X's flag defaulting to None, a bool a switch
    (`--no-x` when it defaults to True), the docstring `help=`. With `overlay` the flags only
    override another source (train's --config): every default is None, so that a flag not
    given can be told apart, and none is required; --help still shows the field's default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(only) if only is not None else [n for n in fields if n not in skip]
    overrides = overrides or {}
    if unknown := set(overrides) - set(names):
        raise TypeError(f"overrides for fields that get no flag: {sorted(unknown)}")
    hints = get_type_hints(cls)
    for name in names:
        flag = overrides.get(name, Flag())
        strings, kwargs = _argument(name, hints[name], _default(fields[name]), flag, overlay)
        text = flag.get("help") or field_help(cls, name, flag.get("extra", ""), required)
        parser.add_argument(*strings, **kwargs, help=text)


def _argument(name: str, hint: Any, default: Any, flag: Flag,
              overlay: bool) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Option strings and add_argument's keywords of the flag of one field."""
    kind = _without_none(hint)
    dashed = name.replace("_", "-")
    unset = {"default": None} if overlay else {}
    if kind is bool:
        if default is dataclasses.MISSING:
            raise TypeError(f"{name}: a bool field needs a default to become a switch")
        negated = default is True
        strings = flag.get("names", (f"--no-{dashed}" if negated else f"--{dashed}",))
        return strings, {"action": "store_false" if negated else "store_true", "dest": name,
                         **unset}
    kwargs: dict[str, Any] = {}
    if get_origin(kind) is tuple:
        kind = get_args(kind)[0]  # tuple[X, ...]
        if flag.get("repeat") and default not in (dataclasses.MISSING, ()):
            # argparse appends to the default list rather than replacing it
            raise TypeError(f"{name}: a repeated flag is for a field without a default")
        kwargs.update({"action": "append"} if flag.get("repeat") else {"nargs": "+"})
    if get_origin(kind) is Literal:
        kwargs["choices"] = list(get_args(kind))
    elif kind in (int, float):
        kwargs["type"] = kind
    elif kind is not str:  # argparse's default already gives a str
        raise TypeError(f"{name}: no flag for a field of type {hint}; skip it")
    strings = flag.get("names", (f"--{dashed}",))
    if not strings[0].startswith("-"):  # a positional: argparse takes neither dest nor required
        if default is not dataclasses.MISSING:
            raise TypeError(f"{name}: a positional is for a field without a default")
        return strings, kwargs
    kwargs["dest"] = name
    if overlay:
        kwargs["default"] = None
    elif default is dataclasses.MISSING:
        kwargs["required"] = True
    else:  # a tuple as the list argparse itself makes of nargs="+"
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
    return strings, kwargs


def _without_none(hint: Any) -> Any:
    """X of `X | None` (its flag defaults to None); any other type as it is."""
    if get_origin(hint) in (Union, types.UnionType):
        rest = [a for a in get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _default(field: dataclasses.Field[Any]) -> Any:
    """A field's default (its factory's product), or MISSING for a required field."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


T = TypeVar("T")


def from_flags(cls: type[T], args: Mapping[str, Any]) -> T:
    """The config of parsed flags: argparse's lists (nargs, append) become the fields' tuples."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


def run_command(prog: str, command: Callable[[], int], resume_hint: str) -> int:
    """Run a command; errors a user can act on become one line on stderr and exit 2, Ctrl-C
    (even when a writer it stopped reports it as an error of its own) says how to resume and
    exits 130. Programming errors keep their traceback."""
    try:
        return command()
    except BaseException as e:
        if interrupted(e):
            print(f"\n{prog}: interrupted; {resume_hint}", file=sys.stderr)
            return INTERRUPTED
        if isinstance(e, StoreError | ValueError | KeyError | FileNotFoundError):
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"{prog}: error: {message}", file=sys.stderr)
            return 2
        if isinstance(e, OSError) or (isinstance(e, Exception) and transient(e)):
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
            return 2
        raise


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
    config: type | None = None
    """The dataclass its flags are made from (`add_fields`), for the checks that every field
    has its flag."""
