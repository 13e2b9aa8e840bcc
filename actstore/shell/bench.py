"""`actstore bench`: flags parse into one BenchConfig, then every stage runs."""

from __future__ import annotations

from typing import Any

from actstore.bench.config import STAGES, BenchConfig
from actstore.shell.flags import Command, field_help


def add_bench_parser(sub: Any) -> None:
    b = sub.add_parser(
        "bench", help="measure every stage against its ceiling on this machine",
        description="Measure generation (against the bare forward pass), the store (against "
        "plain files of the same bytes), the loader (against sequential reads and decoding "
        "alone) and the trainer (dense and sparse steps over a ladder of sizes, from the loader "
        "against from memory) on this machine, each ceiling measured in the same run; print "
        "one table and write bench.json and bench.md. Needs no Ray and no network.")

    def h(name: str) -> str:
        return field_help(BenchConfig, name)
    b.add_argument("--out", default=BenchConfig.out, help=h("out"))
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help=h("device"))
    b.add_argument("--model", help=h("model"))
    b.add_argument("--hook", help=h("hook"))
    b.add_argument("--context-length", type=int, help=h("context_length"))
    b.add_argument("--batch-size", type=int, help=h("batch_size"))
    b.add_argument("--latents", type=int, nargs="+", help=h("latents"))
    b.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help=h("stages"))
    b.add_argument("--quick", action="store_true", help=h("quick"))
    b.add_argument("--seconds", type=float, default=BenchConfig.seconds, help=h("seconds"))


def run_bench(args: dict[str, Any]) -> int:
    from actstore.bench.run import bench

    cfg = BenchConfig(**{**args, "stages": tuple(args["stages"]),
                         "latents": tuple(args["latents"]) if args["latents"] else None})
    result = bench(cfg)
    from actstore.bench.report import markdown

    print(markdown(result))
    return 0


COMMAND = Command("bench", add_bench_parser, run_bench)
