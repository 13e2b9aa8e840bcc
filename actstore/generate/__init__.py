"""Generation: a model run over a corpus fills a store, resumably.

    GenerateConfig (config.py)                              flags, checked once
      └─ identity.make_spec: model config + hook names on the meta device, tokenizer,
         weights' and corpus's digests ──▶ StoreSpec ──▶ key ──▶ store_url
    pipeline.generate: complete store? reuse it
      └─ corpus/ builds the contexts (before any lock: bad data fails first)
      └─ executors/ choose_executor ──▶ start() (join Ray or stay in this process)
      └─ JobLock ──▶ create or reopen the store ──▶ executor.run(missing shards)
           └─ worker.ShardWorker per shard: model forward (model.capture stops after the last
              hook) ──▶ rows in context order ──▶ shuffled ──▶ store.writer.write_shard
      └─ executor.finish()
    toy.py: `actstore toy`, synthetic stores with ground-truth features

Public names (what `actstore.generate` has always exported): `GenerateConfig`,
`GenerateResult`, `ModelNotFoundError`, `dataset_identity`, `device_and_dtype`, `generate`,
`hook_widths`, `make_spec`, `store_url`.
"""

from actstore.generate.config import GenerateConfig, GenerateResult, device_and_dtype
from actstore.generate.identity import (
    ModelNotFoundError,
    dataset_identity,
    hook_widths,
    make_spec,
    store_url,
)
from actstore.generate.pipeline import generate

__all__ = [
    "GenerateConfig",
    "GenerateResult",
    "ModelNotFoundError",
    "dataset_identity",
    "device_and_dtype",
    "generate",
    "hook_widths",
    "make_spec",
    "store_url",
]
