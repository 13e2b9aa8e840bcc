"""Training: `actstore train`'s config, loop, checkpoints and run folder.

    config.TrainConfig ──▶ train.train: run_dir (JobLock, cfg.json) ──▶ Loader (actstore) ──▶
      training.ensemble.Ensemble.step (dictionaries, Adam, AuxK) ──▶ metrics, logs, plots
      ──▶ checkpoint (exact resume: model, optimiser, loader state) ──▶ export at the end
    memory.py: the memory model (`--plan`); bench.py: the trainer stage of `actstore bench`
"""
