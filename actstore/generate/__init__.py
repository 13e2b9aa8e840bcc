"""Generation: a model run over a corpus fills a store, resumably. Read top to bottom, this is
the path of a store URL from `actstore generate` (actstore.shell) to the shard writer:

    GenerateConfig (config.py)                              flags, checked once
      └─ identity.make_spec: model config + hook names on the meta device, tokenizer,
         weights' and corpus's digests (fingerprint.py) ──▶ StoreSpec ──▶ key
         ──▶ identity.store_url: `<out>/<key>`
    pipeline.generate: a complete store at that URL? reuse it
      └─ corpus/ builds the contexts (before any lock: bad data fails first)
      └─ executors/ choose_executor ──▶ start() (join Ray or stay in this process)
      └─ store.lock.JobLock ──▶ ActivationStore.create(url) or .open(url)
         ──▶ executor.run(store, missing shards): pool.ShardPool queues them to the workers
           └─ worker.ShardWorker(store.url), one per device or Ray actor, opens the store;
              per shard: model forward (model.capture stops after the last hook) ──▶ rows in
              context order ──▶ shuffled ──▶ store.writer.write_shard ──▶ ShardWriter:
              lease, write, commit
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
