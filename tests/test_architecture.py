"""The house's rules, checked on the import graph as Python sees it (grimp, the graph
import-linter builds: imports inside functions and under TYPE_CHECKING count too)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actstore", "trainer", "cluster")
#: Modules a folder may hold directly (its __init__ included), so that folders stay concepts.
MAX_MODULES = 12


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(edges):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": [], "c": ["b"]}) == []


def test_no_module_imports_another_that_imports_it_back(graph: grimp.ImportGraph) -> None:
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert cycles(edges) == []


def test_actstore_never_imports_the_trainer_or_the_cluster_recipes(
        graph: grimp.ImportGraph) -> None:
    for module in graph.modules:
        if module == "actstore" or module.startswith("actstore."):
            upward = {m for m in graph.find_modules_directly_imported_by(module)
                      if m.split(".")[0] in ("trainer", "cluster")}
            assert not upward, f"{module} imports {sorted(upward)}"


def test_no_folder_holds_more_than_twelve_modules() -> None:
    for package in PACKAGES:
        for folder in [ROOT / package, *(p for p in (ROOT / package).rglob("*") if p.is_dir())]:
            modules = sorted(p.name for p in folder.glob("*.py"))
            assert len(modules) <= MAX_MODULES, f"{folder}: {modules}"


def test_the_public_packages_export_what_they_always_have() -> None:
    """`actstore`, `actstore.loader` and `actstore.generate` keep their names across the
    reorganisation into layers (each name resolves to a real object, not just a listing)."""
    import actstore
    import actstore.generate
    import actstore.loader

    expected = {
        actstore: ["CONTEXT_SCHEMA", "ActivationStore", "Codec", "CorruptChunkError",
                   "FormatError", "HookStats", "JobLock", "Layout", "RowIndex",
                   "ShardCommittedError", "ShardLeaseError", "ShardWriter", "SpecMismatchError",
                   "StoreAccessError", "StoreBusyError", "StoreError", "StoreFullError",
                   "StoreNotFoundError", "StoreSpec", "VerifyReport", "break_lease", "verify",
                   "write_shard"],
        actstore.loader: ["STATE_VERSION", "Batch", "EpochPlan", "Loader", "LoaderConfig",
                          "Normalizer", "selected_chunks", "selected_rows"],
        actstore.generate: ["GenerateConfig", "GenerateResult", "ModelNotFoundError",
                            "dataset_identity", "device_and_dtype", "generate", "hook_widths",
                            "make_spec", "store_url"],
    }
    for package, names in expected.items():
        assert sorted(package.__all__) == sorted(names), package.__name__
        for name in names:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
