"""Each flag is declared once, on its config dataclass's field (actstore.shell.flags.add_fields):
every command's flags have their field's default and Literal choices, every field has a flag,
and parsing only the required flags gives the config with its own defaults."""

from __future__ import annotations

import argparse
import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest

from actstore.shell.flags import Command, Flag, add_fields, from_flags
from actstore.shell.main import build_parser, commands

#: Fields that are no flag: a mapping has no command-line spelling.
NOT_FLAGS = {("generate", "storage_options")}
#: Flags that set no field: train's file of settings, and its memory plan (no training).
NOT_FIELDS = {("train", "config"), ("train", "plan")}
#: Commands whose flags only override a --config file: every default is None, so a flag not
#: given leaves the file's setting (the field's default still shows in --help).
OVERLAY = {"train"}
#: The least each command needs (its argv, and the fields that sets), to parse it into the
#: config with every other field's default.
REQUIRED: dict[str, tuple[list[str], dict[str, Any]]] = {
    "info": (["u"], {"url": "u"}), "verify": (["u"], {"url": "u"}), "ls": (["r"], {"root": "r"}),
    "toy": (["--out", "o"], {"out": "o"}),
    "generate": (["--model", "m", "--hook", "h", "--dataset", "d", "--out", "o"],
                 {"model": "m", "hooks": ("h",), "dataset": "d", "out": "o"}),
    "eval": (["--run", "r", "--out", "o"], {"run": "r", "out": "o"}),
    "steer": (["--dictionary", "d", "--latent", "1", "--scale", "2", "--prompt", "p"],
              {"dictionary": "d", "latent": 1, "scale": 2.0, "prompt": "p"}),
    "interpret": (["--run", "r", "--llm", "m", "--out", "o"], {"run": "r", "llm": "m", "out": "o"}),
    "bench": ([], {})}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """What the flag of field `f` defaults to: the default, a tuple as argparse's list."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is dataclasses.MISSING:
        return None  # a required flag: argparse's default is None
    return list(f.default) if isinstance(f.default, tuple) else f.default


def _literal_values(hint: Any) -> list[Any] | None:
    """The choices a field's type allows: Literal[...], inside `X | None` or `tuple[X, ...]`."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is tuple:
        hint = get_args(hint)[0]
    return list(get_args(hint)) if get_origin(hint) is Literal else None


def _config(command: Command) -> type:
    assert command.config is not None, f"{command.name} names no config (Command.config)"
    return command.config


COMMANDS = {c.name: c for c in commands()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_its_fields_default_and_literal_choices(name: str) -> None:
    cls = _config(COMMANDS[name])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for action in _flags(_parsers()[name]):
        if (name, action.dest) in NOT_FIELDS:
            continue
        assert action.dest in fields, f"{name} {action.option_strings} sets no field of {cls}"
        expected = None if name in OVERLAY else _field_default(fields[action.dest])
        assert action.default == expected, f"{name} {action.option_strings}: default"
        choices = list(action.choices) if action.choices is not None else None
        assert choices == _literal_values(hints[action.dest]), \
            f"{name} {action.option_strings}: choices"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_field_of_a_commands_config_has_a_flag(name: str) -> None:
    dests = {a.dest for a in _flags(_parsers()[name])}
    fields = {f.name for f in dataclasses.fields(_config(COMMANDS[name]))}
    missing = {f for f in fields - dests if (name, f) not in NOT_FLAGS}
    assert not missing, f"{name}: fields {sorted(missing)} have no flag (or list in NOT_FLAGS)"


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - OVERLAY))
def test_the_required_flags_alone_give_the_configs_defaults(name: str) -> None:
    argv, fields = REQUIRED[name]
    args = vars(build_parser().parse_args([name, *argv]))
    del args["command"]
    cls = _config(COMMANDS[name])
    assert from_flags(cls, args) == cls(**fields)


@dataclass(frozen=True)
class Toy:
    name: str
    """A required string."""
    count: int = 3
    """An int."""
    scale: float | None = None
    """An optional float (default: none)."""
    mode: Literal["a", "b"] = "a"
    """A choice."""
    sizes: tuple[int, ...] = (1, 2)
    """Several ints."""
    fast: bool = False
    """A switch."""
    bar: bool = True
    """Shown unless --no-bar."""
    extra: dict[str, str] = field(default_factory=dict)
    """No flag."""


def _toy_parser(**kwargs: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_fields(parser, Toy, skip={"extra"}, **kwargs)
    return parser


def test_a_fields_type_default_and_literal_become_its_flag() -> None:
    parser = _toy_parser()
    assert from_flags(Toy, vars(parser.parse_args(["--name", "n"]))) == Toy("n")
    args = ["--name", "n", "--count", "4", "--scale", "0.5", "--mode", "b", "--sizes", "7", "8",
            "--fast", "--no-bar"]
    assert from_flags(Toy, vars(parser.parse_args(args))) == \
        Toy("n", 4, 0.5, "b", (7, 8), fast=True, bar=False)
    assert "A choice (default: a)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "n", "--mode", "c"])


def test_an_overlay_leaves_every_flag_not_given_none() -> None:
    args = vars(_toy_parser(overlay=True).parse_args([]))
    assert set(args.values()) == {None}


@dataclass(frozen=True)
class Tags:
    name: str
    """A positional."""
    tags: tuple[str, ...]
    """One per --tag."""


def test_overrides_respell_a_flag_and_repeat_it() -> None:
    parser = argparse.ArgumentParser()
    add_fields(parser, Tags, overrides={"name": Flag(names=("name",)),
                                        "tags": Flag(names=("--tag",), repeat=True)})
    args = vars(parser.parse_args(["n", "--tag", "a", "--tag", "b"]))
    assert from_flags(Tags, args) == Tags("n", ("a", "b"))
    with pytest.raises(SystemExit):
        parser.parse_args(["n"])  # --tag is required: the field has no default


def test_a_repeated_flag_is_refused_a_default_it_would_append_to() -> None:
    with pytest.raises(TypeError, match="sizes: a repeated flag"):
        _toy_parser(overrides={"sizes": Flag(repeat=True)})


def test_a_field_with_no_command_line_spelling_is_refused() -> None:
    with pytest.raises(TypeError, match="extra: no flag"):
        add_fields(argparse.ArgumentParser(), Toy)
    with pytest.raises(TypeError, match="get no flag"):
        _toy_parser(overrides={"extra": Flag(help="x")})
