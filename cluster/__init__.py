"""cluster: running on a Ray cluster. Entry points that `ray job submit` runs, and a cluster
configuration (`aws-gpu.yaml`, for `ray up`).

    python -m cluster.generate_job …  ──▶ `actstore generate --executor ray`: Ray actors on the
                                          cluster write the shards (actstore.generate.executors)
    python -m cluster.train_job …     ──▶ Ray Train's TorchTrainer, one rank per worker, each
                                          running trainer.training.train.train

The top layer: it imports actstore and trainer, and nothing imports it.
"""
