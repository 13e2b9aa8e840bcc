"""`actstore eval --dictionary PATH`: dictionaries saved by SAELens, sparsify or us, as members
of the evaluation, each checked against the store and hook it is scored on."""

from __future__ import annotations

from pathlib import Path

from actstore.store.activation_store import ActivationStore
from trainer.dictionary.foreign import load_any, same_hook
from trainer.evaluation.config import EvalConfig, Member


def scored_hook(cfg: EvalConfig, run: list[Member]) -> tuple[ActivationStore, str]:
    """The store and hook every dictionary is scored on: the run's when there is one (a
    --hook naming another is refused), else --store's --hook (or its only hook)."""
    if run:
        hook = run[0].source["hook"]
        if cfg.hook is not None and cfg.hook != hook:
            raise ValueError(f"--hook {cfg.hook} is not the hook the run's dictionaries read "
                             f"({hook}): the --dictionary dictionaries are scored on it")
        url = cfg.store or run[0].source["store"]
    else:
        assert cfg.store is not None  # EvalConfig asks for --store without --run
        url, hook = cfg.store, cfg.hook or ""
    store = ActivationStore.open(url)
    hooks = sorted(store.layout.d_model)
    if not hook:
        if len(hooks) > 1:
            raise ValueError(f"store {url} holds hooks {', '.join(hooks)}: pass --hook")
        hook = hooks[0]
    if hook not in store.layout.d_model:
        raise ValueError(f"store {url} has no hook {hook} (it has {', '.join(hooks)})")
    return store, hook


def imported(cfg: EvalConfig, run: list[Member]) -> list[Member]:
    """Every --dictionary as a member scored on the run's (or --store's) hook; a width or a
    recorded hook that does not match the store's is refused in one line naming both."""
    if not cfg.dictionary:
        return []
    store, hook = scored_hook(cfg, run)
    width = store.layout.d_model[hook]
    taken = {m.name for m in run}
    out = []
    for path in cfg.dictionary:
        got = load_any(path)
        if got.sae.cfg.d_model != width:
            raise ValueError(f"{path} reads activations of width {got.sae.cfg.d_model}, but "
                             f"{hook} of store {store.url} has width {width}")
        if got.hook and not same_hook(got.hook, hook) and not cfg.any_hook:
            raise ValueError(f"{path} was trained on hook {got.hook}, not on {hook} of store "
                             f"{store.url} (--any-hook scores it anyway)")
        name = _unique(Path(path), taken)
        taken.add(name)
        source = {"store": store.url, "store_key": store.key, "hook": hook,
                  "model": got.model, "format": got.format, "path": str(path),
                  "trained_on": got.hook}
        out.append(Member(name, got.sae, got.norm, source))
    return out


def _unique(path: Path, taken: set[str]) -> str:
    """The folder's name, with its parent's (then a number) when another member has it."""
    resolved = path.resolve()
    for name in (resolved.name, f"{resolved.parent.name}-{resolved.name}"):
        if name not in taken:
            return name
    i = 2
    while f"{resolved.name}-{i}" in taken:
        i += 1
    return f"{resolved.name}-{i}"
