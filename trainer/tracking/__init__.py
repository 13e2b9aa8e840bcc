"""Experiment trackers, shared by `actstore train` and `actstore eval` (below both layers):

    config.TrackingConfig: --log tensorboard,wandb and the --wandb-* flags, declared once
    trackers.py: TensorBoard event files and W&B runs in a run folder (one W&B run per folder,
      its id kept in <out>/wandb/run_id, so eval logs to the run that trained)
"""
