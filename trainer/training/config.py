"""`actstore train`'s one config: flags or a JSON/TOML file, checked before any work.

A sweep is several values of `--latents`, `--k`, `--l1` or `--l0`: every combination becomes
one member of an ensemble trained on the same stream of batches (the seed paper's sweeps).
Checks that need the store (hook present, d_model, enough rows) are in `check_against`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from actstore.loader.paired import SECOND
from trainer.dictionary.dictionaries import Arch, DictionaryConfig, Kernel, Kind, resolve_kernel
from trainer.dictionary.matryoshka import check_widths
from trainer.tracking.config import TrackingConfig
from trainer.training.defaults import (
    DEFAULT_SPARSITY,
    JUMP,
    LR_SCALE,
    default_intervals,
    default_tokens,
)

Normalize = Literal["none", "scale", "center_scale"]
#: The sparsity setting each architecture sweeps: a field of both TrainConfig (a tuple of
#: values) and DictionaryConfig (one value).
KNOB: dict[str, str] = {"relu": "l1", "jumprelu": "l0", "topk": "k", "batchtopk": "k",
                        "matryoshka": "k"}
BiasInit = Literal["geometric_median", "mean", "zeros"]


def default_lr(latents: int) -> float:
    """Adam's learning rate for a dictionary of `latents`: 4e-4 at 16,384 latents, scaled by
    1 / sqrt(latents). The scaling is Gao et al. 2024's ("Scaling and Evaluating Sparse
    Autoencoders", appendix A: 2e-4 at 16,384); in `benchmarks/schedule_sweep.py` twice their
    rate beat theirs, half of it and fixed rates, and four times won by less as runs grew and
    lost latents, so the default stays nearer the published rate for runs longer than the
    sweep (benchmarks/README.md, section `schedule_sweep.py`)."""
    return float(4e-4 * (16384 / latents) ** 0.5)


def default_warmup(steps: int) -> int:
    """Warmup steps for a run of `steps`: 5% of it (at most 1000), so a short run reaches its
    peak learning rate early instead of spending most of itself warming up."""
    return min(1000, max(1, steps // 20))


def default_dead_window(tokens: int, batch_size: int) -> int:
    """Tokens after which a silent latent counts as dead: a tenth of the run (at least one
    batch, at most 10M as Gao et al. 2024), so AuxK revives latents within short runs too and
    `dead` is not 0 by construction."""
    return min(10_000_000, max(batch_size, tokens // 10))


@dataclass(frozen=True)
class TrainConfig(TrackingConfig):
    """One training run: a store, a hook, one dictionary or a sweep of them (and the trackers
    it logs to: `TrackingConfig`'s fields)."""

    store: tuple[str, ...]
    """URL of a complete store; two (the flag repeated) for model diffing with --kind
    crosscoder: the stores hold the same tokens (e.g. through a base model and its fine-tune)
    and are read row by row, every --hook from both."""
    hook: tuple[str, ...]
    """Hook (module path) whose activations are fitted; a CLT's input hooks, one per layer in
    layer order; a crosscoder's sites."""
    arch: Arch
    """relu (the seed paper's L1 sparse coding), topk, batchtopk, jumprelu or matryoshka
    (Matryoshka BatchTopK: nested prefixes of the latents each reconstruct)."""
    latents: tuple[int, ...]
    """Dictionary sizes (several: a sweep)."""
    out: str
    """Local output directory: dictionaries, metrics, checkpoints, plots."""
    tokens: int | None = None
    """Training tokens (rows) in all, across ranks (default: one pass over the store's
    training rows, those not held out, in whole batches, at most 100,000,000)."""
    batch_size: int = 4096
    """Global batch in rows, split evenly across ranks."""
    k: tuple[int, ...] = ()
    """Active latents per token (topk, batchtopk, matryoshka; default: 32)."""
    l1: tuple[float, ...] = ()
    """L1 coefficients (relu; default: 2, from benchmarks/defaults_sweep.py)."""
    l0: tuple[float, ...] = ()
    """L0 coefficients (jumprelu; default: 0.3, from benchmarks/defaults_sweep.py)."""
    jump_init_threshold: float | None = None
    """Initial threshold of every jumprelu latent, in normalised units (default: 1, from
    benchmarks/defaults_sweep.py; 0.001 before it)."""
    jump_bandwidth: float | None = None
    """Width of jumprelu's straight-through estimator around the threshold (default: 0.05,
    from benchmarks/defaults_sweep.py; 0.001 before it)."""
    resume: bool = False
    """Continue from the checkpoint in `out`."""
    overwrite: bool = False
    """Start afresh in an `out` that holds another run (its files are replaced)."""
    lr: float | None = None
    """Adam learning rate after warmup (default: `default_lr`, 4e-4 * sqrt(16384 / latents)
    per dictionary: Gao et al. 2024's scaling at twice their rate, from a sweep; 4 times that
    for relu and jumprelu, from another)."""
    warmup_steps: int | None = None
    """Linear learning-rate warmup from 0, in steps (default: `default_warmup`, 5% of the
    run, at most 1000)."""
    decay_start: float = 0.8
    """Fraction of the steps after which the learning rate decays linearly to 0."""
    grad_clip: float | None = 1.0
    """Clip each dictionary's gradient norm (None: no clipping)."""
    seed: int = 0
    """Seeds the parameters and the loader's order."""
    normalize: Normalize = "scale"
    """Input normalisation from the store's statistics (folded back on export)."""
    bias_init: BiasInit = "geometric_median"
    """Initial pre-encoder bias: geometric median or mean of a sample, or zeros."""
    init_rows: int = 16384
    """Rows sampled for the bias init."""
    aux_coef: float = 1 / 32
    """AuxK loss weight (topk, batchtopk)."""
    dead_after_tokens: int | None = None
    """A latent silent for this many tokens is dead (the `dead` metric, and AuxK's input)
    (default: `default_dead_window`, a tenth of the run, at most 10M tokens)."""
    holdout: float = 0.0
    """Fraction of the store's shards (the last ones: whole contexts) never trained on, for
    held-out scores (`actstore eval`, loss recovered); 0: train on every row."""
    tp: int = 1
    """Ranks each dictionary's latents are split over (latent sharding, for dictionaries
    larger than one device); the world size must be a multiple, and dp = world size / tp ranks
    read different batches. Any tp can resume another's checkpoint."""
    kernel: Kernel = "auto"
    """The training step: sparse (latents selected block by block, gradients through the
    selected entries only; no (batch, latents) tensor) or dense (the plain PyTorch step). auto:
    sparse for topk and batchtopk, dense for relu and jumprelu (whose codes are not chosen by
    rank). Both give the same parameters within floating-point rounding."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """cuda (one GPU per rank, LOCAL_RANK) when available, else cpu."""
    autocast: bool = True
    """bf16 autocast of the forward pass on cuda (parameters and optimiser stay float32)."""
    log_every: int | None = None
    """Steps between metric lines (metrics.jsonl) (default: 50; given only --checkpoint-every,
    its largest divisor up to 50)."""
    checkpoint_every: int | None = None
    """Steps between checkpoints, a multiple of --log-every so resume replays the same log
    (default: the smallest multiple of --log-every that is at least 500)."""
    eval_every: int = 0
    """Steps between loss-recovered evaluations with the model spliced (0: at the end only)."""
    eval_contexts: int = 16
    """Contexts of the held-out slice for loss recovered (0: skip; needs the model)."""
    shuffle_buffer: int = 1 << 18
    """Loader shuffle window in rows (rounded down to a multiple of the per-rank batch)."""
    read_threads: int = 4
    """Loader threads reading and decoding chunks."""
    progress: bool = True
    """Progress bar on rank 0."""
    plots: bool = True
    """PNG plots of the curves and latent densities at the end."""
    kind: Kind = "sae"
    """sae: reconstruct --hook; transcoder: predict --target-hook from --hook (e.g. an MLP's
    input and output); clt: a cross-layer transcoder, layer l's latents reading the l-th
    --hook and writing into the l-th --target-hook and every later one; crosscoder: latents
    shared by every --hook, each with its own encoder and decoder (relu: Lindsey et al.'s
    L1 weighted by the decoder norms)."""
    target_hook: tuple[str, ...] = ()
    """The hook a transcoder predicts (a CLT's: one per --hook, same order), which the store
    must hold beside --hook (default: none, as an SAE predicts its own input)."""
    skip: bool = False
    """A transcoder's learned linear skip from --hook to --target-hook (skip transcoder)."""
    widths: tuple[int, ...] = ()
    """Matryoshka's nested prefix widths in latents, increasing; --latents is added as the
    last (default: latents/4 and all, from benchmarks/matryoshka_sweep.py)."""
    prefix_weight: float | None = None
    """Weight of each inner prefix's loss in Matryoshka's, the full reconstruction's being 1
    (default: 0.1, from benchmarks/matryoshka_sweep.py; SAELens sums them: 1)."""
    init_from: str | None = None
    """A dictionary's folder to start from instead of a random one (fine-tuning): ours, or
    saved by SAELens or sparsify, as `actstore eval --dictionary` reads them. An SAE of this
    --arch, as wide as --hook with --latents latents (one dictionary, not a sweep); its b_dec
    replaces --bias-init (default: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # --log's comma lists
        for name in ("store", "hook", "target_hook"):  # one as a string (files, older runs)
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str)
                               else tuple(value or ()))
        checks = [
            (self.arch in get_args(Arch), f"--arch must be one of {get_args(Arch)}"),
            (bool(self.latents) and min(self.latents) >= 1, "--latents must be >= 1"),
            ((self.tokens is None or self.tokens >= 1) and self.batch_size >= 1,
             "--tokens and --batch-size must be >= 1"),
            (self.tokens is None or self.tokens >= self.batch_size,
             f"--tokens ({self.tokens}) must be at least one batch ({self.batch_size})"),
            ((self.lr is None or self.lr > 0)
             and (self.warmup_steps is None or self.warmup_steps >= 0),
             "--lr must be > 0, --warmup-steps >= 0"),
            (0 <= self.decay_start <= 1, "--decay-start is a fraction in [0, 1]"),
            (self.grad_clip is None or self.grad_clip > 0, "--grad-clip must be > 0"),
            (self.tp >= 1, "--tp must be >= 1"),
            (0 <= self.holdout < 1, "--holdout is a fraction in [0, 1)"),
            (all(i is None or i >= 1 for i in (self.log_every, self.checkpoint_every)),
             "intervals must be >= 1"),
            (self.eval_every >= 0 and self.eval_contexts >= 0, "eval settings must be >= 0"),
            (self.init_rows >= 1 and (self.dead_after_tokens is None
                                      or self.dead_after_tokens >= 1), "counts must be >= 1"),
            (self.normalize in get_args(Normalize), f"--normalize: {get_args(Normalize)}"),
            (self.bias_init in get_args(BiasInit), f"--bias-init: {get_args(BiasInit)}"),
            (not self.init_from or (self.kind == "sae" and len(self.latents) == 1 and len(
                getattr(self, KNOB.get(self.arch, "k"))) == 1),
             "--init-from starts one SAE (--kind sae, one --latents, one sparsity value), not "
             "a sweep, a transcoder or a CLT"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        log, checkpoint = self.intervals  # both given: the one pair that can disagree
        if checkpoint % log:
            raise ValueError(f"--checkpoint-every ({checkpoint}) must be a multiple of "
                             f"--log-every ({log}), so a resumed run logs exactly what an "
                             "uninterrupted one does")
        self._check_sparsity()
        if self.kernel not in get_args(Kernel):
            raise ValueError(f"--kernel must be one of {get_args(Kernel)}")
        if self.kind not in get_args(Kind):
            raise ValueError(f"--kind must be one of {get_args(Kind)}")
        self._check_hooks()
        self._check_second_store()
        resolve_kernel(self.arch, self.kernel)  # refuses sparse for relu / jumprelu

    def _check_sparsity(self) -> None:
        """The sparsity settings are this architecture's, and --k fits the dictionary."""
        name = KNOB[self.arch]
        for other in {"l1", "l0", "k"} - {name}:
            if getattr(self, other):
                raise ValueError(f"--{other} does not apply to --arch {self.arch}")
        for jump in JUMP:
            value = getattr(self, jump)
            if value is not None and (self.arch != "jumprelu" or value <= 0):
                raise ValueError(f"--{jump.replace('_', '-')} is jumprelu's, and > 0")
        default = "" if self.k else " (the default)"
        for n, k in itertools.product(self.latents, self.sparsity if name == "k" else ()):
            if not 1 <= k <= n:
                raise ValueError(f"--k {k}{default} must be in [1, latents={n}]")
        if self.widths and self.arch != "matryoshka":
            raise ValueError("--widths are Matryoshka's: add --arch matryoshka")
        if self.prefix_weight is not None and self.arch != "matryoshka":
            raise ValueError("--prefix-weight is Matryoshka's: add --arch matryoshka")
        for n in self.latents if self.widths else ():
            check_widths(self.widths, n)

    def _check_second_store(self) -> None:
        for h in self.hook if len(self.store) == 1 else ():
            if h.endswith(SECOND):
                raise ValueError(f"--hook {h} names a hook of a second store ({SECOND}: model "
                                 "diffing): give two --store, or the hook without it")

    def _check_hooks(self) -> None:
        if not self.hook or not all(self.hook) or not all(self.target_hook):
            raise ValueError("--hook needs a hook name")
        if self.kind == "sae" and (self.target_hook or self.skip):
            raise ValueError("--target-hook and --skip are a transcoder's: add --kind "
                             "transcoder")
        if self.kind == "sae" and len(self.hook) > 1:
            raise ValueError(f"an SAE reads one --hook, got {len(self.hook)}; train one run "
                             "per hook, --kind crosscoder for latents shared by the hooks, or "
                             "--kind clt for a cross-layer transcoder")
        if not self.store or not all(self.store) or len(self.store) > 2 or (
                len(self.store) == 2 and self.kind != "crosscoder"):
            raise ValueError("--store takes one store, or two for model diffing with --kind "
                             f"crosscoder; got {list(self.store)} for --kind {self.kind}")
        if self.kind == "crosscoder" and (len(self.sites) < 2 or self.target_hook
                                          or self.skip):
            raise ValueError("--kind crosscoder reads its sites from --hook (at least 2, or one "
                             "from each of two --store) and reconstructs them: no "
                             "--target-hook or --skip")
        if self.kind == "transcoder" and not self.target_hook:
            raise ValueError("--kind transcoder needs --target-hook (the hook it predicts)")
        if self.kind == "transcoder" and (len(self.hook), len(self.target_hook)) != (1, 1):
            raise ValueError("--kind transcoder reads one --hook and predicts one "
                             f"--target-hook, got {len(self.hook)} and {len(self.target_hook)}")
        if self.kind == "clt":
            if len(self.hook) < 2 or len(self.hook) != len(self.target_hook):
                raise ValueError("--kind clt needs a --hook per layer (at least 2) and as many "
                                 f"--target-hook, in layer order; got {len(self.hook)} and "
                                 f"{len(self.target_hook)}")
            if self.skip:
                raise ValueError("--skip applies to --kind transcoder, not to a CLT")
        if len(set(self.hook + self.target_hook)) != len(self.hook) + len(self.target_hook):
            raise ValueError(f"each hook may appear once in --hook and --target-hook, got "
                             f"{list(self.hook) + list(self.target_hook)}")

    def dictionaries(self, d_model: int, d_out: int | None = None,
                     sites: tuple[int, ...] = ()) -> list[DictionaryConfig]:
        """One config per member of the sweep, in a fixed order (`d_out`: a transcoder's or a
        CLT's target width; `sites`: a crosscoder's hooks' widths, d_model their sum)."""
        key = KNOB[self.arch]
        shape: dict[str, Any] = (
            {"kind": "transcoder", "d_out": d_out, "skip": self.skip}
            if self.kind == "transcoder" else
            {"kind": "clt", "d_out": d_out, "layers": len(self.hook)} if self.kind == "clt"
            else {"kind": "crosscoder", "sites": sites} if self.kind == "crosscoder" else {})
        if self.widths:
            shape["widths"] = self.widths
        if self.prefix_weight is not None:
            shape["prefix_weight"] = self.prefix_weight
        # jumprelu's settings as given (None: DictionaryConfig's defaults, which are ours)
        jump: dict[str, Any] = {name: getattr(self, name) for name in JUMP
                                if getattr(self, name) is not None}
        sweep: tuple[Any, ...] = self.sparsity
        return [DictionaryConfig(arch=self.arch, d_model=d_model, latents=n, aux_coef=self.aux_coef,
                                 dead_after_tokens=self.dead_window, **shape, **jump, **{key: v})
                for n, v in itertools.product(self.latents, sweep)]

    @property
    def sites(self) -> tuple[str, ...]:
        """The hooks the dictionaries read, as the store (a pair of stores: `PairedStore`)
        names them: --hook; with a second --store, every --hook from both (H, H@B), unless
        some --hook names store B's own (H@B: two models whose modules are named apart)."""
        if len(self.store) == 1 or any(h.endswith(SECOND) for h in self.hook):
            return self.hook
        return self.hook + tuple(h + SECOND for h in self.hook)

    @property
    def sparsity(self) -> tuple[float, ...]:
        """The architecture's sparsity values (`--k`, `--l1` or `--l0`), or its default."""
        given: tuple[float, ...] = getattr(self, KNOB[self.arch])
        return given or DEFAULT_SPARSITY[self.arch]

    @property
    def intervals(self) -> tuple[int, int]:
        """(log_every, checkpoint_every) in effect: the flags, or `default_intervals`."""
        return default_intervals(self.log_every, self.checkpoint_every)

    def resolved(self, train_rows: int) -> TrainConfig:
        """This config with every default filled in, as a run uses it and its checkpoint
        records it (so a resume compares meanings, not spellings); `train_rows`: the store's
        rows not held out, which --tokens' default passes over once."""
        tokens = self.tokens
        if tokens is None:
            if train_rows < self.batch_size:
                raise ValueError(f"the store has {train_rows} training rows, fewer than one "
                                 f"batch of {self.batch_size}: lower --batch-size")
            tokens = default_tokens(train_rows, self.batch_size)
        log, checkpoint = self.intervals
        filled: dict[str, Any] = {KNOB[self.arch]: self.sparsity}
        if self.arch == "jumprelu":  # DictionaryConfig's defaults where not given
            defaults = {f.name: f.default for f in dataclasses.fields(DictionaryConfig)}
            filled |= {name: defaults[name] if getattr(self, name) is None
                       else getattr(self, name) for name in JUMP}
        return dataclasses.replace(self, tokens=tokens, log_every=log,
                                   checkpoint_every=checkpoint, **filled)

    @property
    def hooks(self) -> tuple[str, ...]:
        """The hooks a run reads: the sites, and a transcoder's or CLT's --target-hook."""
        return self.sites + self.target_hook

    @property
    def targets(self) -> tuple[str, ...]:
        """The hooks the dictionaries reconstruct: --target-hook, an SAE's own sites."""
        return self.target_hook or self.sites

    @property
    def run_tokens(self) -> int:
        """--tokens; its default needs the store (`resolved`), which a run resolves first."""
        if self.tokens is None:
            raise ValueError("--tokens' default depends on the store: use resolved(rows)")
        return self.tokens

    @property
    def steps(self) -> int:
        """Optimiser steps of the run."""
        return self.run_tokens // self.batch_size

    @property
    def warmup(self) -> int:
        """Warmup steps in effect (the flag, or `default_warmup`)."""
        return default_warmup(self.steps) if self.warmup_steps is None else self.warmup_steps

    @property
    def dead_window(self) -> int:
        """Tokens of silence after which a latent is dead (the flag, or the default)."""
        return (default_dead_window(self.run_tokens, self.batch_size)
                if self.dead_after_tokens is None else self.dead_after_tokens)

    def lr_of(self, member: DictionaryConfig) -> float:
        """The learning rate a member trains at (the flag, or `default_lr` of its size times
        its architecture's `LR_SCALE`)."""
        return default_lr(member.latents) * LR_SCALE[member.arch] if self.lr is None else self.lr

    def schedule_warning(self) -> str | None:
        """Why this schedule never reaches its peak learning rate, or None when it does."""
        decay_from = int(self.decay_start * self.steps)
        # the factor reaches 1 at step warmup - 1 (if the run gets there), and stays 1 until
        # step decay_from
        if self.warmup - 1 > min(decay_from, self.steps - 1):
            return (f"warmup ({self.warmup} steps) ends after the decay starts (step "
                    f"{decay_from} of {self.steps}): the learning rate never reaches its peak; "
                    "lower --warmup-steps or raise --tokens")
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown train settings {unknown}; known: {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d
                         and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"missing train settings {missing}")
        tuples = {k: tuple(v) if isinstance(v, list | tuple) else (v,)
                  for k, v in d.items()
                  if k in ("latents", "k", "l1", "l0", "store", "hook", "widths", "log")}
        if d.get("target_hook") is None:  # runs before CLTs saved "no target" as None
            tuples["target_hook"] = ()
        if d.get("arch") == "matryoshka" and "prefix_weight" not in d:
            d = {**d, "prefix_weight": 1.0}  # runs before --prefix-weight summed the prefixes
        return cls(**{**d, **tuples})

    @classmethod
    def from_file(cls, path: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """A JSON or TOML file of the same settings as the flags; `overrides` win."""
        text = Path(path).read_text()
        data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a table of settings")
        return cls.from_dict({**data, **(overrides or {})})
