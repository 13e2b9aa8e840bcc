"""`actstore bench`: flags parse into one BenchConfig, then every stage runs."""

from __future__ import annotations

from typing import Any

from actstore.bench.config import BenchConfig
from actstore.shell.flags import Command, add_fields, from_flags


def add_bench_parser(sub: Any) -> None:
    b = sub.add_parser(
        "bench", help="measure every stage against its ceiling on this machine",
        description="Measure generation (against the bare forward pass), the store (against "
        "plain files of the same bytes), the loader (against sequential reads and decoding "
        "alone) and the trainer (dense and sparse steps over a ladder of sizes, from the loader "
        "against from memory) on this machine, each ceiling measured in the same run; print "
        "one table and write bench.json and bench.md. Needs no Ray and no network.")
    add_fields(b, BenchConfig)


def run_bench(args: dict[str, Any]) -> int:
    from actstore.bench.run import bench

    result = bench(from_flags(BenchConfig, args))
    from actstore.bench.report import markdown

    print(markdown(result))
    return 0


COMMAND = Command("bench", add_bench_parser, run_bench, config=BenchConfig)
