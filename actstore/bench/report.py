"""bench.md: the machine, then one table per stage, each number beside its ceiling."""

from __future__ import annotations

from typing import Any

_RULE = "| --- | --- | --- | --- | --- |"


def _machine(m: dict[str, Any]) -> list[str]:
    gpu = m.get("gpu")
    mem = m.get("memory_bytes")
    v = m["versions"]
    return [f"- CPU: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads); "
            f"memory {mem / 2**30:.0f} GiB" if mem else f"- CPU: {m['cpu']}, {m['cores']} cores",
            f"- GPU: {gpu['name']} ({gpu['memory_bytes'] / 2**30:.0f} GiB, CUDA {gpu['cuda']})"
            if gpu else "- GPU: none",
            f"- disk: {m['disk']['device']} ({m['disk']['filesystem']}) at {m['disk']['path']}",
            "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items())]


def _section(title: str, intro: str, unit: str, rows: list[tuple[str, str, str, str, float]]
             ) -> list[str]:
    """A stage's table: (measured, its value, ceiling, its value, ratio) per row."""
    head = [f"## {title}", "", intro, "", f"| measured | {unit} | ceiling | {unit} | ratio |",
            _RULE]
    return [*head, *(f"| {a} | {va} | {b} | {vb} | {r:.2f} |" for a, va, b, vb, r in rows), ""]


def _generation(g: dict[str, Any]) -> list[str]:
    bare = f"{g['bare_tokens_per_s']:,.0f}"
    return _section(
        "Generation", f"{g['model']} → `{g['hook']}`, context {g['context_length']}, batch "
        f"{g['batch_size']}, {g['tokens']:,} tokens, best of {g['rounds']} rounds.", "tokens/s",
        [("capture + store pipeline", f"{g['pipeline_tokens_per_s']:,.0f}",
          "bare forward stopped after the hook", bare, g["pipeline_vs_bare"]),
         ("`generate()` end to end (start-up included)", f"{g['end_to_end_tokens_per_s']:,.0f}",
          "bare forward", bare, g["end_to_end_tokens_per_s"] / g["bare_tokens_per_s"])])


def _store(s: dict[str, Any]) -> list[str]:
    return _section(
        "Store", f"{s['rows']:,} rows in {s['shards']} shards, {s['threads']} threads; "
        f"compression {s['compression_ratio']:.2f}× ({s['raw_bytes'] / 1e6:,.0f} MB raw, "
        f"{s['stored_bytes'] / 1e6:,.0f} MB stored); MB/s of activations (of stored bytes); "
        "the ceiling is plain files of the same stored bytes, the ratio in stored bytes.", "MB/s",
        [("write (encode, checksum, fsync, commit)",
          f"{s['write_mb_per_s']:,.0f} ({s['write_stored_mb_per_s']:,.0f})", "write + fsync",
          f"{s['disk_write_mb_per_s']:,.0f}", s["write_vs_disk"]),
         ("cold read (decode)", f"{s['read_mb_per_s']:,.0f} ({s['read_stored_mb_per_s']:,.0f})",
          "cold read", f"{s['disk_read_mb_per_s']:,.0f}", s["read_vs_disk"])])


def _loader(x: dict[str, Any]) -> list[str]:
    return _section(
        "Loader", f"{x['rows']:,} rows, batch {x['batch']}, shuffle window "
        f"{x['shuffle_buffer']:,} rows; shuffle quality: same-context pairs "
        f"{x['shuffle_same_context_ratio']:.2f}× a perfect shuffle.", "rows/s",
        [("epoch, cold cache", f"{x['epoch_cold_rows_per_s']:,.0f}",
          "sequential plain reads, cold", f"{x['disk_cold_rows_per_s']:,.0f}",
          x["cold_vs_disk"]),
         ("epoch, warm cache", f"{x['epoch_warm_rows_per_s']:,.0f}", "decoding alone",
          f"{x['decode_rows_per_s']:,.0f}", x["warm_vs_decode"])])


def _trainer(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Trainer", "", "TopK k=32, one full training step (`Ensemble.step`). Peak: the "
           "step's own memory on cuda (allocator statistics); on cpu `-`, since the resident set "
           "of one process is no measure of it (benchmarks/large_dictionary.py measures it in a "
           "process per configuration).", "",
           "| latents | step | batch | from memory tok/s | from the loader tok/s | loader ÷ "
           "memory | sparse ÷ dense | peak | memory model |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['latents']:,} | {r['kernel']} | {r['batch']} | skipped: "
                       f"{r['skipped']} | | | | | |")
            continue
        ratio = f"{r['sparse_vs_dense']:.2f}" if "sparse_vs_dense" in r else ""
        out.append(f"| {r['latents']:,} | {r['kernel']} | {r['batch']} | "
                   f"{r['memory_tokens_per_s']:,.0f} | {r['loader_tokens_per_s']:,.0f} | "
                   f"{r['loader_vs_memory']:.2f} | {ratio} | {_gib(r['peak_bytes'])}"
                   f" | {r['predicted_bytes'] / 2**30:.2f} GiB |")
    return [*out, ""]


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def markdown(result: dict[str, Any]) -> str:
    s = result["stages"]
    lines = [f"# actstore bench, {result['date']}", "", *_machine(result["machine"]), "",
             f"Device {result['plan']['device']}; {result['seconds']:.0f} s in all.", ""]
    if "generation" in s:
        lines += _generation(s["generation"])
    if "store" in s:
        lines += _store(s["store"])
    if "loader" in s:
        lines += _loader(s["loader"])
    if "trainer" in s:
        lines += _trainer(s["trainer"])
    return "\n".join(lines)
