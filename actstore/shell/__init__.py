"""The `actstore` command: the layer nothing in actstore imports. `main.py` builds one parser
from actstore's own commands (`store_commands.py`, `bench.py`) and those other packages
register as `actstore.commands` entry points (the trainer's train, eval and steer).
`flags.py` turns config dataclasses into flags and errors into one line, for every command.
"""
