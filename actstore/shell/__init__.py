"""The `actstore` command: the layer nothing in actstore imports. `main.py` builds one parser
from actstore's own commands (`store_commands.py`, `bench.py`) and those other packages
register as `actstore.commands` entry points (the trainer's train, eval and steer).
`flags.py` turns config dataclasses into flags and errors into one line, for every command.

    actstore <command> ──▶ main.py ──▶ store_commands.py  info, ls (summary.py), verify,
                                                          generate (actstore.generate), toy
                                   ──▶ bench.py           bench (actstore.bench)
                                   ──▶ `actstore.commands` train, eval, steer (trainer)
"""
