"""Where a generation job's shards run: one scheduler interface, two implementations.

    choose.choose_executor(cfg) ──▶ LocalExecutor (local.py)  one ShardWorker in this process
                                └─▶ RayExecutor (ray_pool.py) Ray actors; ray_cluster.py joins
                                                              or starts Ray, reaper.py ties a
                                                              local Ray to this process
    executor.start() → WorkerPlan   (before the store's lock: an unreachable cluster fails here)
    executor.run(store, shards, job_id)  → pool.ShardPool: queue, 2 in flight per worker,
                                           retries on a dead worker or a passing upload fault
    executor.finish()               (always)

Public names: `Executor`, `WorkerPlan` (base.py), `choose_executor` (choose.py).
"""
