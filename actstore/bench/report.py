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


def _generation(g: dict[str, Any]) -> list[str]:
    return ["## Generation", "",
            f"{g['model']} → `{g['hook']}`, context {g['context_length']}, batch "
            f"{g['batch_size']}, {g['tokens']:,} tokens, best of {g['rounds']} rounds.", "",
            "| measured | tokens/s | ceiling | tokens/s | ratio |", _RULE,
            f"| capture + store pipeline | {g['pipeline_tokens_per_s']:,.0f} | bare forward "
            f"stopped after the hook | {g['bare_tokens_per_s']:,.0f} | "
            f"{g['pipeline_vs_bare']:.2f} |",
            f"| `generate()` end to end (start-up included) | "
            f"{g['end_to_end_tokens_per_s']:,.0f} | bare forward | {g['bare_tokens_per_s']:,.0f}"
            f" | {g['end_to_end_tokens_per_s'] / g['bare_tokens_per_s']:.2f} |", ""]


def _store(s: dict[str, Any]) -> list[str]:
    return ["## Store", "",
            f"{s['rows']:,} rows in {s['shards']} shards, {s['threads']} threads; compression "
            f"{s['compression_ratio']:.2f}× ({s['raw_bytes'] / 1e6:,.0f} MB raw, "
            f"{s['stored_bytes'] / 1e6:,.0f} MB stored).", "",
            "| measured | MB/s of activations (stored) | ceiling: plain files, same bytes | "
            "MB/s | ratio (stored bytes) |", "| --- | --- | --- | --- | --- |",
            f"| write (encode, checksum, fsync, commit) | {s['write_mb_per_s']:,.0f} "
            f"({s['write_stored_mb_per_s']:,.0f}) | write + fsync | "
            f"{s['disk_write_mb_per_s']:,.0f} | {s['write_vs_disk']:.2f} |",
            f"| cold read (decode) | {s['read_mb_per_s']:,.0f} ({s['read_stored_mb_per_s']:,.0f})"
            f" | cold read | {s['disk_read_mb_per_s']:,.0f} | {s['read_vs_disk']:.2f} |", ""]


def _loader(x: dict[str, Any]) -> list[str]:
    return ["## Loader", "",
            f"{x['rows']:,} rows, batch {x['batch']}, shuffle window {x['shuffle_buffer']:,} "
            f"rows; shuffle quality: same-context pairs "
            f"{x['shuffle_same_context_ratio']:.2f}× a perfect shuffle.", "",
            "| measured | rows/s | ceiling | rows/s | ratio |", _RULE,
            f"| epoch, cold cache | {x['epoch_cold_rows_per_s']:,.0f} | sequential plain reads, "
            f"cold | {x['disk_cold_rows_per_s']:,.0f} | {x['cold_vs_disk']:.2f} |",
            f"| epoch, warm cache | {x['epoch_warm_rows_per_s']:,.0f} | decoding alone | "
            f"{x['decode_rows_per_s']:,.0f} | {x['warm_vs_decode']:.2f} |", ""]


def _trainer(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Trainer", "", "TopK k=32, one full training step (`Ensemble.step`).", "",
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
                   f"{r['loader_vs_memory']:.2f} | {ratio} | {r['peak_bytes'] / 2**30:.2f} GiB"
                   f" | {r['predicted_bytes'] / 2**30:.2f} GiB |")
    return [*out, ""]


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
