"""Processes working together: the torch.distributed world (`distributed`: setup, rank,
collectives), the data x tensor-parallel mesh (`mesh`) and the autograd collectives that
latent slicing uses (`ops`).

    torchrun (env) | Ray Train (group exists) | one process
      ──▶ distributed.setup ──▶ World(rank, size, device; NCCL on GPUs, gloo on CPU)
      ──▶ mesh.make_mesh(world, tp) ──▶ Mesh: dp × tp, a tp group = tp consecutive ranks
      ──▶ ops.copy_to_slices / sum_over_slices (Megatron's pair, for dictionary.slices),
          gather / gather_uneven (for dictionary.gather)
    distributed.all_reduce, broadcast_object, gather_objects, barrier: what the loop and
    evaluation share across ranks (no-ops in one process)
"""
