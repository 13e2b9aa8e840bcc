"""trainer: sparse dictionaries trained on streams from an actstore store.

    cli.py (`actstore train`, `torchrun -m trainer.cli`)
      └─ training/   config, loop, checkpoints, run folder, memory model
           └─ evaluation/ (`actstore eval`) and steering/ (`actstore steer`)
                └─ dictionary/  the model, kernels, files, latent slices
                     └─ parallel/  torch.distributed world, mesh, collectives
Everything here may import actstore (store, loader, model); actstore never imports trainer.
"""
