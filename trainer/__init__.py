"""trainer: sparse dictionaries trained on streams from an actstore store.

    cli.py (`actstore train`, `torchrun -m trainer.cli`)
      └─ training/   config, loop, checkpoints, run folder, memory model
           └─ evaluation/ (`actstore eval`) and steering/ (`actstore steer`)
                └─ dictionary/  the model, kernels, files, latent slices
                     └─ parallel/  torch.distributed world, mesh, collectives
Everything here may import actstore's store, loader and model; only the commands (cli.py,
evaluation/cli.py, steering/cli.py) import its shell, and only the bench stage
(training/bench.py) its bench. actstore never imports trainer (pyproject.toml's contracts).
"""
