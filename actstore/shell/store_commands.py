"""actstore's own subcommands: info, verify, ls, generate, toy. Each parses into one frozen
config, then runs."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from actstore.generate.config import GenerateConfig, GenerateResult
from actstore.generate.pipeline import generate
from actstore.shell.flags import Command, field_help
from actstore.shell.summary import describe, scan_stores, summary_line
from actstore.store.activation_store import ActivationStore
from actstore.store.location import Location
from actstore.store.spec import DTYPE_ITEMSIZE
from actstore.store.verify import verify


@dataclass(frozen=True)
class InfoConfig:
    """`actstore info URL [--json]`."""

    url: str
    """Store URL (path, file://, memory://, s3://, gs://)."""
    as_json: bool = False
    """Print machine-readable JSON instead of text."""


@dataclass(frozen=True)
class VerifyConfig:
    """`actstore verify URL [--partial]`."""

    url: str
    """Store URL."""
    partial: bool = False
    """Check committed shards only; an incomplete store is not an error."""


@dataclass(frozen=True)
class LsConfig:
    """`actstore ls ROOT [--json]`."""

    root: str
    """Folder or bucket prefix holding stores (searched two levels down)."""
    as_json: bool = False
    """Print JSON (one object per store) instead of text."""


def run_info(cfg: InfoConfig) -> int:
    info = describe(ActivationStore.open(cfg.url))
    if cfg.as_json:
        print(json.dumps(info, indent=2))
        return 0
    spec = info.pop("spec")
    print(f"store     {info['url']}\nkey       {info['key']}")
    print(f"complete  {info['complete']} ({info['shards_done']}/{info['num_shards']} shards, "
          f"{info['rows_committed']}/{info['num_rows']} rows)")
    ratio = info["compression_ratio"]
    print(f"bytes     {info['compressed_bytes']} compressed / {info['raw_bytes']} raw"
          + (f" = {ratio:.2f}x" if ratio else ""))
    for hook, h in info["hooks"].items():
        print(f"hook      {hook}: d_model={h['d_model']} dtype={h['dtype']} array={h['array']}")
    print("spec      " + json.dumps(spec, sort_keys=True))
    return 0


def run_verify(cfg: VerifyConfig) -> int:
    report = verify(ActivationStore.open(cfg.url), partial=cfg.partial)
    for problem in report.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{status}: {report.shards_checked} shards, {report.rows_checked} rows checked")
    return 0 if report.ok else 1


def run_ls(cfg: LsConfig) -> int:
    stores, bad = scan_stores(Location.from_url(cfg.root))
    if cfg.as_json:
        print(json.dumps([{"url": s.url, "key": s.key, "spec": s.spec.to_dict(),
                           "shards_done": len(s.shards_done()), "num_shards": s.num_shards}
                          for s in stores], indent=2))
    else:
        for s in stores:
            print(summary_line(s))
        if not stores and not bad:
            print(f"no stores under {cfg.root}", file=sys.stderr)
    for b in bad:
        print(f"BAD STORE {b.url}: {b.error}", file=sys.stderr)
    return 0  # the listing itself worked; bad stores are named on stderr


def run_generate(cfg: GenerateConfig) -> int:
    result = generate(cfg)
    if result.reused:
        print(f"store {result.url} is complete for this spec: reusing it "
              f"({result.seconds:.1f}s)")
    else:
        _print_summary(cfg, result)
    if cfg.verify:
        run_info(InfoConfig(result.url))
        return run_verify(VerifyConfig(result.url))
    return 0


def _print_summary(cfg: GenerateConfig, result: GenerateResult) -> None:
    raw = result.tokens * sum(ActivationStore.open(result.url).layout.d_model.values()) * \
        DTYPE_ITEMSIZE[cfg.store_dtype]
    ratio = raw / result.compressed_bytes if result.compressed_bytes else float("nan")
    print(f"done: {result.url}: {result.tokens} tokens in {result.seconds:.1f}s "
          f"({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s), "
          f"{result.compressed_bytes} bytes written, compression {ratio:.2f}x")


def _add_generate(sub: Any) -> None:
    g = sub.add_parser("generate", help="run a model over a corpus into a store (Ray)",
                       description="Run a model over a corpus and fill a store, resumably, "
                       "with Ray workers (or in this process when Ray would not pay, see "
                       "--executor); the same spec again reuses the store.")

    def h(name: str, extra: str = "") -> str:
        return field_help(GenerateConfig, name, extra)
    g.add_argument("--model", required=True, help=h("model"))
    g.add_argument("--hook", action="append", required=True, dest="hooks",
                   help=h("hooks", "; repeat the flag for several"))
    g.add_argument("--dataset", required=True, help=h("dataset"))
    g.add_argument("--out", required=True, help=h("out"))
    for name, kind in (("context_length", int), ("max_tokens", int), ("revision", str),
                       ("dataset_revision", str), ("split", str), ("text_column", str)):
        g.add_argument(f"--{name.replace('_', '-')}", type=kind, help=h(name),
                       default=getattr(GenerateConfig, name, None))
    g.add_argument("--bos", choices=["keep", "drop", "none"], default="keep", help=h("bos"))
    g.add_argument("--context-policy", choices=["pack", "truncate"], default="pack",
                   help=h("context_policy"))
    g.add_argument("--store-dtype", choices=["bfloat16", "float16", "float32"],
                   default="bfloat16", help=h("store_dtype"))
    g.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help=h("dtype"))
    g.add_argument("--device", choices=["cuda", "cpu"], help=h("device"))
    g.add_argument("--workers", type=int, help=h("workers"))
    g.add_argument("--cpus-per-worker", type=float, help=h("cpus_per_worker"))
    g.add_argument("--batch-size", type=int, default=8, help=h("batch_size"))
    g.add_argument("--shard-mib", type=int, default=256, help=h("shard_mib"))
    g.add_argument("--address", help=h("address"))
    g.add_argument("--executor", choices=["auto", "ray", "local"], default="auto",
                   help=h("executor"))
    g.add_argument("--max-retries", type=int, default=3, help=h("max_retries"))
    g.add_argument("--no-progress", action="store_false", dest="progress",
                   help="no progress bar")
    g.add_argument("--verify", action="store_true", help=h("verify"))


def _add_toy(sub: Any) -> None:
    from actstore.generate.toy import ToyConfig

    t = sub.add_parser("toy", help="write a store of synthetic activations with known "
                       "ground-truth features (for MMCS)",
                       description="Write a store of sparse non-negative mixtures of random "
                       "unit directions (Sharkey et al. 2022's toy data), with the directions "
                       "saved beside it as ground_truth.safetensors; the same flags again "
                       "reuse the store.")
    t.add_argument("--out", required=True, help=field_help(ToyConfig, "out"))
    for name, kind in (("d", int), ("features", int), ("active", float), ("decay", float),
                       ("correlation", float), ("rows", int), ("seed", int)):
        t.add_argument(f"--{name}", type=kind, default=getattr(ToyConfig, name),
                       help=field_help(ToyConfig, name))
    t.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help=field_help(ToyConfig, "dtype"))


def run_toy(args: dict[str, Any]) -> int:
    from actstore.generate.toy import HOOK, ToyConfig, make_toy_store

    cfg = ToyConfig(**args)
    store = make_toy_store(cfg)
    print(f"done: {store.url}: {store.num_rows} rows of d={cfg.d} (hook {HOOK!r}), "
          f"{cfg.features} ground-truth features, {cfg.active:g} active per row on average")
    return 0


def _add_info(sub: Any) -> None:
    info = sub.add_parser("info", help="describe a store")
    info.add_argument("url", help=field_help(InfoConfig, "url"))
    info.add_argument("--json", action="store_true", dest="as_json",
                      help=field_help(InfoConfig, "as_json"))


def _add_verify(sub: Any) -> None:
    ver = sub.add_parser("verify", help="read every chunk and check exactly-once coverage")
    ver.add_argument("url", help=field_help(VerifyConfig, "url"))
    ver.add_argument("--partial", action="store_true", help=field_help(VerifyConfig, "partial"))


def _add_ls(sub: Any) -> None:
    ls = sub.add_parser("ls", help="list stores under a root")
    ls.add_argument("root", help=field_help(LsConfig, "root"))
    ls.add_argument("--json", action="store_true", dest="as_json",
                    help=field_help(LsConfig, "as_json"))


COMMANDS = (
    Command("info", _add_info, lambda args: run_info(InfoConfig(**args))),
    Command("verify", _add_verify, lambda args: run_verify(VerifyConfig(**args))),
    Command("ls", _add_ls, lambda args: run_ls(LsConfig(**args))),
    Command("generate", _add_generate,
            lambda args: run_generate(GenerateConfig(**{**args, "hooks": tuple(args["hooks"])})),
            "rerun the same command to resume"),
    Command("toy", _add_toy, run_toy),
)
"""In the order `actstore --help` lists them."""
