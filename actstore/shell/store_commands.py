"""actstore's own subcommands: info, verify, ls, generate, toy. Each parses into one frozen
config, then runs."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from actstore.generate.config import GenerateConfig, GenerateResult
from actstore.generate.pipeline import generate
from actstore.generate.toy import HOOK, ToyConfig, make_toy_store
from actstore.shell.flags import Command, Flag, add_fields, from_flags
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
        if h.get("noise_floor_fvu") is not None:
            print(f"          scales={h['scales']}; noise floor FVU {h['noise_floor_fvu']:.2e} "
                  "(8-bit rounding: lower FVUs cannot be told apart through this store)")
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
    add_fields(g, GenerateConfig, skip={"storage_options"}, overrides={
        "hooks": Flag(names=("--hook",), repeat=True, extra="; repeat the flag for several"),
        "progress": Flag(help="no progress bar")})


def _add_toy(sub: Any) -> None:
    t = sub.add_parser("toy", help="write a store of synthetic activations with known "
                       "ground-truth features (for MMCS)",
                       description="Write a store of sparse non-negative mixtures of random "
                       "unit directions (Sharkey et al. 2022's toy data), with the directions "
                       "saved beside it as ground_truth.safetensors; the same flags again "
                       "reuse the store.")
    add_fields(t, ToyConfig)


def run_toy(args: dict[str, Any]) -> int:
    cfg = from_flags(ToyConfig, args)
    store = make_toy_store(cfg)
    print(f"done: {store.url}: {store.num_rows} rows of d={cfg.d} (hook {HOOK!r}), "
          f"{cfg.features} ground-truth features, {cfg.active:g} active per row on average")
    return 0


#: `--json` for the fields that print JSON (`json` itself is a module's name in Python).
_JSON = Flag(names=("--json",))


def _add_info(sub: Any) -> None:
    add_fields(sub.add_parser("info", help="describe a store"), InfoConfig,
               overrides={"url": Flag(names=("url",)), "as_json": _JSON})


def _add_verify(sub: Any) -> None:
    add_fields(sub.add_parser("verify", help="read every chunk and check exactly-once coverage"),
               VerifyConfig, overrides={"url": Flag(names=("url",))})


def _add_ls(sub: Any) -> None:
    add_fields(sub.add_parser("ls", help="list stores under a root"), LsConfig,
               overrides={"root": Flag(names=("root",)), "as_json": _JSON})


COMMANDS = (
    Command("info", _add_info, lambda args: run_info(from_flags(InfoConfig, args)),
            config=InfoConfig),
    Command("verify", _add_verify, lambda args: run_verify(from_flags(VerifyConfig, args)),
            config=VerifyConfig),
    Command("ls", _add_ls, lambda args: run_ls(from_flags(LsConfig, args)), config=LsConfig),
    Command("generate", _add_generate,
            lambda args: run_generate(from_flags(GenerateConfig, args)),
            "rerun the same command to resume", config=GenerateConfig),
    Command("toy", _add_toy, run_toy, "rerun the same command to resume", config=ToyConfig),
)
"""In the order `actstore --help` lists them."""
