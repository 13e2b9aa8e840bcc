"""Sparse dictionaries: the seed paper's ReLU + L1 sparse coding, TopK (with AuxK), BatchTopK,
Matryoshka BatchTopK (matryoshka.py: nested prefixes that each reconstruct) and JumpReLU, on one
parameterisation (SAELens' names, so export is a rename):

    pre   = (x - b_dec) @ W_enc + b_enc         the pre-encoder bias b_dec is tied to the decoder's
    z     = activation(pre)                     relu | top-k | batch top-k | jump relu
    x_hat = z @ W_dec + b_dec                   rows of W_dec (one per latent) have unit norm

A crosscoder (`kind="crosscoder"`, crosscoder.py) is an SAE over several sites side by side.
A transcoder (`kind="transcoder"`) reads one hook and predicts another (an MLP's input and
output), widths d_model and d_out; its encoder takes the input as it is (b_dec lives in the
target's space), and a skip transcoder adds a learned linear map of the input:

    pre   = x @ W_enc + b_enc
    y_hat = z @ W_dec + b_dec [+ x @ W_skip]    W_skip (d_model, d_out), zero at the start

Losses are per token: squared error summed over d_model, averaged over the batch, plus the
architecture's sparsity term. Decoder rows are kept at unit norm: `remove_parallel_grad()`
before the optimiser step, `normalize_decoder()` after it (the seed paper's constraint).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from trainer.dictionary import crosscoder, kernels, matryoshka
from trainer.dictionary.config import (
    BATCH,
    ENCODER_SEED,
    RECONSTRUCTS,
    SELECTED,
    Arch,
    DictionaryConfig,
    Kernel,
    Kind,
    resolve_kernel,
)
from trainer.dictionary.initialisation import geometric_median, initial_decoder
from trainer.dictionary.kernels.dense import (
    batch_topk_codes,
    selection_counts,
    smallest_positive,
    topk_codes,
)
from trainer.dictionary.kernels.jumprelu import jump_relu, step
from trainer.parallel import distributed

# the configuration's names are re-exported: the modules of the dictionary import them from here
__all__ = ["BATCH", "ENCODER_SEED", "RECONSTRUCTS", "SELECTED", "Arch", "DictionaryConfig",
           "Kernel", "Kind", "Output", "SparseDictionary", "geometric_median", "resolve_kernel"]

class Output(NamedTuple):
    """A training forward pass."""

    x_hat: torch.Tensor
    """Reconstruction of the target (x itself for an SAE), like it."""
    z: torch.Tensor
    """Codes, (batch, latents): dense, or a detached sparse COO tensor from the sparse step."""
    loss: torch.Tensor
    """Total loss (scalar)."""
    terms: dict[str, torch.Tensor]
    """Its parts: mse, and l1_loss / l0_loss / aux_loss as the architecture has them
    (detached; coefficient included). Names end in `_loss` so they never collide with the
    metrics of the same quantity (`l0` is the mean number of active latents)."""
    fired: torch.Tensor
    """Per latent, the tokens of this batch on which it was active, (latents,) int64."""


class SparseDictionary(nn.Module):
    """A dictionary of `latents` unit-norm directions in a `d_model` space."""

    replica_group: Any = None
    """Process group of the ranks holding these same latents (None: every rank)."""
    threshold: torch.Tensor
    """batchtopk's inference threshold (a running estimate of the smallest kept activation)."""
    tokens_since_fired: torch.Tensor
    """Per latent, tokens since it last fired (dead latents, AuxK)."""

    def __init__(self, cfg: DictionaryConfig, generator: torch.Generator | None = None,
                 kernel: Kernel = "auto", latent_slice: tuple[int, int] | None = None) -> None:
        """`latent_slice`: the [start, stop) of the latents this module holds (latent slicing);
        they are initialised exactly as the same rows of the whole dictionary."""
        super().__init__()
        self.cfg = cfg
        self.kernel = resolve_kernel(cfg.arch, kernel)
        d = cfg.d_model
        self.start, self.stop = latent_slice or (0, cfg.latents)
        n = self.stop - self.start
        seed = (generator.initial_seed() if generator is not None
                else int(torch.randint(0, 2**62, ()).item()))
        w = initial_decoder(cfg.out_width, self.start, self.stop, seed)
        self.W_dec = nn.Parameter(w)
        # encoder = decoder transpose at init (a transcoder's: its own directions in the
        # input's space); stored latent-major (the clone keeps w.T's strides), so a latent's
        # encoder column is contiguous, as the sparse step reads it
        enc = w if cfg.kind in RECONSTRUCTS else initial_decoder(d, self.start, self.stop,
                                                          seed ^ ENCODER_SEED)
        self.W_enc = nn.Parameter(enc.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(cfg.out_width))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(d, cfg.out_width))
        if cfg.arch == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((n,), math.log(cfg.jump_init_threshold)))
        self.register_buffer("threshold", torch.zeros(()))  # batchtopk at inference
        self.register_buffer("tokens_since_fired", torch.zeros(n, dtype=torch.long))

    @property
    def local_latents(self) -> int:
        """Latents this module holds (all of them unless sliced)."""
        return self.stop - self.start

    # --- the maps ---------------------------------------------------------------------------

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder multiplies: an SAE's input centred by b_dec, a transcoder's as it
        is (its b_dec is in the target's space)."""
        return x - self.b_dec if self.cfg.kind in RECONSTRUCTS else x

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return self.into_slices(self.encoder_input(x)) @ self.W_enc + self.b_enc

    def skip_term(self, x: torch.Tensor | None) -> torch.Tensor | float:
        """A skip transcoder's x @ W_skip (replicated over tp slices), else 0."""
        if not self.cfg.skip:
            return 0.0
        if x is None:
            raise ValueError("a skip transcoder decodes with its input: decode(z, x)")
        return x @ self.W_skip

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction from codes `z`; a skip transcoder needs its input `x` too."""
        return self.over_slices(z @ self.W_dec) + self.b_dec + self.skip_term(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes at inference (batchtopk uses its learned threshold, not the batch)."""
        pre = self.pre_acts(x)
        arch = self.cfg.arch
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk":
            return topk_codes(pre, self.cfg.k or 1)[0]
        if arch in BATCH:
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        return jump_relu(pre, self.log_threshold.exp(), self.cfg.jump_bandwidth)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: the reconstruction of x (..., d) (a transcoder's prediction of its
        target, (..., d_out)) and which latents fired, (latents,) bool; under the sparse
        kernel without a (tokens, latents) tensor."""
        x_hat, codes = self.infer(x.flatten(0, -2))
        fired = torch.zeros(self.local_latents, dtype=torch.bool, device=x.device)
        fired[codes.cols] = True
        return x_hat.view(*x.shape[:-1], self.cfg.out_width), fired

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, kernels.Selection]:
        """Inference on (tokens, d): the reconstruction and the non-zero codes (values > 0,
        local latent ids), under the sparse kernel without a (tokens, latents) tensor."""
        if self.kernel == "dense":
            z = self.encode(x)
            rows, cols = z.nonzero(as_tuple=True)
            return self.decode(z, x), kernels.from_sorted(rows, cols, z[rows, cols], len(x))
        n, k = self.local_latents, self.cfg.k or 1
        top = self.cfg.arch == "topk"  # batchtopk: per token, against its learned threshold
        acc: kernels.Accumulator = (kernels.RowTopK(len(x), k, x.device) if top
                                    else kernels.Above(len(x), n, self.threshold))
        sel, = kernels.select(self.encoder_input(x), self.W_enc, self.b_enc, [acc])
        if top:
            sel = self.winners(sel, k, by_row=True)
        codes = torch.relu(sel.values)
        x_hat = (self.over_slices(kernels.decode([sel], [codes], self.W_dec)[0]) + self.b_dec
                 + self.skip_term(x))
        live = codes > 0
        return x_hat, kernels.from_sorted(sel.rows[live], sel.cols[live], codes[live], len(x))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Output:
        """Training pass: codes, reconstruction of the target (`y` for a transcoder, x itself
        for an SAE), losses; tracks which latents fire."""
        target = self._target(x, y)
        if self.kernel == "sparse":
            return self._forward_sparse(x, target)
        pre = self.pre_acts(x)
        arch = self.cfg.arch
        fired = None  # per-latent counts: from the B·k selections when there are some
        if arch in BATCH:
            z, fired = batch_topk_codes(pre, (self.cfg.k or 1) * x.shape[0])
            self._update_threshold(smallest_positive(z.flatten()))
        elif arch == "jumprelu":
            z = jump_relu(pre, self.log_threshold.exp(), self.cfg.jump_bandwidth)
        elif arch == "topk":
            z, fired = topk_codes(pre, self.cfg.k or 1)
        else:
            z = torch.relu(pre)
        if fired is None:
            fired = (z > 0).sum(0)
        x_hat = self.decode(z, x)
        mse = ((x_hat - target) ** 2).sum(-1).mean()
        terms = {"mse": mse}
        if arch == "relu":
            terms["l1_loss"] = self.cfg.l1 * self.over_slices(self._l1(z)).mean()
        elif arch == "jumprelu":
            l0 = step(pre, self.log_threshold.exp(), self.cfg.jump_bandwidth)
            terms["l0_loss"] = self.cfg.l0 * self.over_slices(l0.sum(-1)).mean()
        else:
            terms["aux_loss"] = self.cfg.aux_coef * self._aux_loss(target, x_hat, pre)
        if arch == "matryoshka":
            terms["prefix_loss"] = self.cfg.prefix_weight * matryoshka.prefix_loss(
                z, self.W_dec, self.b_dec + self.skip_term(x), target, widths=self.cfg.widths,
                start=self.start, over_slices=self.over_slices)
        self._track(fired, x.shape[0])
        loss = torch.stack(list(terms.values())).sum()
        return Output(x_hat, z, loss, {k: v.detach() for k, v in terms.items()}, fired)

    # --- AuxK, batchtopk threshold, activity --------------------------------------------------

    def _l1(self, z: torch.Tensor) -> torch.Tensor:
        """Per token, the relu penalty: Σ|z|, a crosscoder's weighted by each latent's decoder
        norms summed over its sites (Lindsey et al. 2024)."""
        if self.cfg.kind == "crosscoder":
            return z.abs() @ crosscoder.site_norms(self.W_dec, self.cfg.sites).sum(1)
        return z.abs().sum(-1)

    def _target(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.kind in RECONSTRUCTS:
            if y is not None:
                raise ValueError("an SAE reconstructs its input: forward(x) takes no target")
            return x
        if y is None:
            raise ValueError("a transcoder predicts a target: forward(x, y)")
        return y

    def dead_mask(self) -> torch.Tensor:
        dead: torch.Tensor = self.tokens_since_fired >= self.cfg.dead_after_tokens
        return dead

    def _aux_loss(self, target: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor
                  ) -> torch.Tensor:
        """AuxK (Gao et al. 2024): the dead latents' top-k_aux reconstruct the residual."""
        dead = self.dead_mask()
        if not bool(dead.any()):
            return target.new_zeros(())
        k_aux = min(self.cfg.aux_k or 2 * (self.cfg.k or 1), int(dead.sum()))
        z_aux = topk_codes(pre.masked_fill(~dead, float("-inf")), k_aux)[0]
        residual = (target - x_hat).detach()
        return ((z_aux @ self.W_dec - residual) ** 2).sum(-1).mean()

    def _forward_sparse(self, x: torch.Tensor, target: torch.Tensor) -> Output:
        """The same pass without (batch, latents) tensors: latents selected block by block,
        gradients only through the selected entries (trainer/dictionary/kernels)."""
        cfg, batch, n = self.cfg, x.shape[0], self.local_latents
        xc = self.into_slices(self.encoder_input(x))
        k, top = cfg.k or 1, cfg.arch == "topk"
        main: kernels.Accumulator = (kernels.RowTopK(batch, k, x.device) if top
                                     else kernels.BatchTopK(batch, n, k * batch, x.device))
        dead = self.dead_mask()
        k_aux = min(cfg.aux_k or 2 * k, int(self.over_slices(dead.sum())))
        accs = [main] + ([kernels.RowTopK(batch, k_aux, x.device, dead)] if k_aux else [])
        found = kernels.select(xc.detach(), self.W_enc, self.b_enc, accs)
        sels = [self.winners(found[0], k if top else k * batch, by_row=top)]
        if k_aux:
            sels.append(self.winners(found[1], k_aux, by_row=True))
        codes = [torch.relu(v) for v in kernels.selected(xc, self.W_enc, self.b_enc, sels)]
        decoded = kernels.decode(sels, codes, self.W_dec)
        x_hat = self.over_slices(decoded[0]) + self.b_dec + self.skip_term(x)
        terms = {"mse": ((x_hat - target) ** 2).sum(-1).mean(), "aux_loss": x.new_zeros(())}
        if k_aux:  # AuxK: the dead latents' top k_aux reconstruct the residual
            aux_err = self.over_slices(decoded[1]) - (target - x_hat).detach()
            terms["aux_loss"] = cfg.aux_coef * (aux_err ** 2).sum(-1).mean()
        sel, z = sels[0], codes[0]
        if cfg.arch == "matryoshka":
            terms["prefix_loss"] = cfg.prefix_weight * matryoshka.sparse_prefix_loss(
                sel, z, self.W_dec, self.b_dec + self.skip_term(x), target, widths=cfg.widths,
                start=self.start, stop=self.stop, over_slices=self.over_slices)
        fired = selection_counts(sel.cols, z.detach() > 0, n)
        if cfg.arch in BATCH:  # the minimum over all ranks is taken by the update
            self._update_threshold(smallest_positive(z.detach()))
        self._track(fired, batch)
        loss = torch.stack(list(terms.values())).sum()
        return Output(x_hat, kernels.to_sparse(sel, z, n), loss,
                      {name: v.detach() for name, v in terms.items()}, fired)

    @torch.no_grad()
    def _update_threshold(self, smallest: torch.Tensor) -> None:
        """Running estimate of the smallest kept activation (`smallest`: this batch's, +inf
        when nothing fired), over the batches of all ranks (every rank keeps the same)."""
        current = distributed.all_reduce(smallest.to(self.threshold.dtype), "min")
        m = self.cfg.threshold_momentum  # torch.where, not `if`: no host sync per step
        updated = torch.where(self.threshold == 0, current,
                              (1 - m) * self.threshold + m * current)
        self.threshold.copy_(torch.where(torch.isfinite(current), updated, self.threshold))

    @torch.no_grad()
    def _track(self, counts: torch.Tensor, tokens: int) -> None:
        """Tokens since each latent fired, over the batches of every rank holding these
        latents (the same on all of them; DDP's buffer broadcast is off because it would
        overwrite this with one rank's view)."""
        group = self.replica_group
        fired = distributed.all_reduce((counts > 0).to(torch.int32), "max", group).bool()
        self.tokens_since_fired.add_(tokens * distributed.group_size(group))
        self.tokens_since_fired.masked_fill_(fired, 0)

    # --- where latent slicing (dictionary/slices.py) hooks in; identities for one slice ---

    def into_slices(self, xc: torch.Tensor) -> torch.Tensor:
        """The centred input as every slice takes it (its gradient: the sum of theirs)."""
        return xc

    def over_slices(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of a per-slice quantity over the slices (the sum's gradient: every one's)."""
        return t

    def winners(self, found: kernels.Selection, count: int,  # noqa: ARG002
                by_row: bool) -> kernels.Selection:  # noqa: ARG002
        """Of the entries this slice selected (each row's top `count`, or the batch's), those
        that win among every slice's: all of them here."""
        return found

    def clip_grad_norm_(self, max_norm: float) -> None:
        """Scale the gradients so that their global norm is at most `max_norm`."""
        torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)

    # --- the decoder constraint ---------------------------------------------------------------

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of each decoder row's gradient along the row (before the step)."""
        if self.W_dec.grad is not None and not crosscoder.free_norms(self.cfg):
            # grad -= (grad·W / |W|²) W row by row, in place: no (latents, d) temporaries
            w, grad = self.W_dec, self.W_dec.grad
            along = torch.bmm(grad.unsqueeze(1), w.unsqueeze(2)).view(-1)
            grad.addcmul_((along / torch.linalg.vector_norm(w, dim=1).square()).unsqueeze(1), w,
                          value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (after the step)."""
        if not crosscoder.free_norms(self.cfg):
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def init_bias(self, sample: torch.Tensor,
                  method: Literal["mean", "geometric_median"] = "geometric_median") -> None:
        """Set b_dec to a centre of the data (a sample of the target's rows), so the codes start
        on centred activations (a transcoder's prediction starts at its target's centre)."""
        self.b_dec.copy_(sample.float().mean(0) if method == "mean"
                         else geometric_median(sample.float()))
