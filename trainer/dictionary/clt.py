"""Cross-layer transcoders (CLTs): L layers, each with its own encoder from that layer's input
hook, whose latents write into the targets of their own layer and of every later one.

    z_l   = activation(x_l @ W_enc[l] + b_enc[l])           x (B, L, d_model), per layer
    y_j   = Σ_{l ≤ j} z_l @ W_dec[l][:, j - l] + b_dec[j]    y (B, L, d_out)

`W_dec[l]` holds layer l's decoders into layers l … L-1 side by side, (n, (L - l) · d_out), the
layout circuit-tracer reads as (n, L - l, d_out), so the parameters grow as L(L+1)/2 decoders.
Each layer's latents are selected on their own (TopK: k per token in every layer; BatchTopK:
k · B per layer; ReLU / JumpReLU thresholds per latent): a replacement model needs latents at
every layer, and one layer's scale cannot starve another's, which a single top-k over all
layers' pre-activations (Llamascopium's batchlayertopk) would let it do. `--k` is therefore
per layer; the logged l0 is the sum over layers.

A latent's decoder is its row of W_dec[l] (every target it writes, concatenated) and is kept at
unit norm, the SAE's constraint on the concatenation. Per-latent tensors are latent-major, so
latent slicing (slices.SlicedCLT) splits every layer's latents the same way; firing counts are
(latents, L). Everything else (dead latents, AuxK per layer, the optimiser step) is the SAE's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.dictionary import kernels
from trainer.dictionary.dictionaries import (
    ENCODER_SEED,
    DictionaryConfig,
    Kernel,
    Output,
    SparseDictionary,
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

__all__ = ["CrossLayerTranscoder", "layer_seed"]


def layer_seed(seed: int, layer: int, encoder: bool) -> int:
    """The initialisation seed of one layer's decoder (or encoder): distinct per layer."""
    return (seed ^ (ENCODER_SEED if encoder else 0)) + layer * 0x2545F4914F6CDD1D


class CrossLayerTranscoder(SparseDictionary):
    """`cfg.layers` encoders from (B, L, d_model) inputs to (B, L, d_out) targets."""

    def __init__(self, cfg: DictionaryConfig, generator: torch.Generator | None = None,
                 kernel: Kernel = "auto", latent_slice: tuple[int, int] | None = None) -> None:
        nn.Module.__init__(self)  # the SAE's single-layer parameters do not exist here
        if cfg.kind != "clt":
            raise ValueError("a CrossLayerTranscoder is built from a kind='clt' config")
        self.cfg = cfg
        self.kernel = resolve_kernel(cfg.arch, kernel)
        self.start, self.stop = latent_slice or (0, cfg.latents)
        n, layers, d_out = self.stop - self.start, cfg.layers, cfg.out_width
        seed = (generator.initial_seed() if generator is not None
                else int(torch.randint(0, 2**62, ()).item()))
        self.W_encs = nn.ParameterList(  # latent-major storage, as the SAE's (sparse step)
            initial_decoder(cfg.d_model, self.start, self.stop, layer_seed(seed, i, True))
            .T.clone() for i in range(layers))
        self.W_decs = nn.ParameterList(
            initial_decoder((layers - i) * d_out, self.start, self.stop,
                            layer_seed(seed, i, False)) for i in range(layers))
        self.b_encs = nn.ParameterList(torch.zeros(n) for _ in range(layers))
        self.b_dec = nn.Parameter(torch.zeros(layers, d_out))
        if cfg.arch == "jumprelu":
            self.log_thresholds = nn.ParameterList(
                torch.full((n,), math.log(cfg.jump_init_threshold)) for _ in range(layers))
        self.register_buffer("threshold", torch.zeros(layers))  # batchtopk, per layer
        self.register_buffer("tokens_since_fired", torch.zeros(n, layers, dtype=torch.long))

    @property
    def layers(self) -> int:
        return self.cfg.layers

    def _scatter(self, decoded: list[torch.Tensor]) -> torch.Tensor:
        """Per layer l, (B, (L - l) · d_out) partial decodes summed into (B, L, d_out) (this
        slice's share; the caller sums over slices)."""
        batch, layers, d_out = decoded[0].shape[0], self.layers, self.cfg.out_width
        out = decoded[0].new_zeros(batch, layers, d_out)
        for i, part in enumerate(decoded):
            out[:, i:] += part.view(batch, layers - i, d_out)
        return out

    # --- inference ------------------------------------------------------------------------

    def _layer_selection(self, i: int, x: torch.Tensor) -> kernels.Selection:
        """Layer i's non-zero codes of x (tokens, d_model) (values > 0, local latent ids)."""
        if self.kernel == "dense":
            pre = self.into_slices(x) @ self.W_encs[i] + self.b_encs[i]
            arch = self.cfg.arch
            if arch == "relu":
                z = torch.relu(pre)
            elif arch == "topk":
                z = topk_codes(pre, self.cfg.k or 1)[0]
            elif arch == "batchtopk":
                z = torch.relu(pre) * (pre > self.threshold[i]).to(pre.dtype)
            else:
                z = jump_relu(pre, self.log_thresholds[i].exp(), self.cfg.jump_bandwidth)
            rows, cols = z.nonzero(as_tuple=True)
            return kernels.from_sorted(rows, cols, z[rows, cols], len(x))
        k, top = self.cfg.k or 1, self.cfg.arch == "topk"
        acc: kernels.Accumulator = (kernels.RowTopK(len(x), k, x.device) if top
                                    else kernels.Above(len(x), self.local_latents,
                                                       self.threshold[i]))
        sel, = kernels.select(self.into_slices(x), self.W_encs[i], self.b_encs[i], [acc])
        if top:
            sel = self.winners(sel, k, by_row=True)
        codes = torch.relu(sel.values)
        live = codes > 0
        return kernels.from_sorted(sel.rows[live], sel.cols[live], codes[live], len(x))

    @torch.no_grad()
    def layer_outputs(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, kernels.Selection]:
        """Layer i's latents on x (tokens, d_model): their writes into targets i … L-1,
        (tokens, L - i, d_out) (no bias), and the codes."""
        sel = self._layer_selection(i, x)
        part = kernels.decode([sel], [sel.values], self.W_decs[i])[0]
        return self.over_slices(part).view(len(x), self.layers - i, -1), sel

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference on x (..., L, d_model): the targets' reconstruction (..., L, d_out) and
        which latents fired, (latents, L) bool."""
        flat = x.flatten(0, -3)
        fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
        out = flat.new_zeros(len(flat), self.layers, self.cfg.out_width)
        for i in range(self.layers):
            part, sel = self.layer_outputs(i, flat[:, i])
            out[:, i:] += part
            fired[sel.cols, i] = True
        return (out + self.b_dec).view(*x.shape[:-1], self.cfg.out_width), fired

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, kernels.Selection]:
        """Inference on (tokens, L, d_model): the reconstruction and the non-zero codes, their
        column ids layer-major (layer i's latent c is i · latents + c)."""
        out = x.new_zeros(len(x), self.layers, self.cfg.out_width)
        rows, cols, values = [], [], []
        for i in range(self.layers):
            part, sel = self.layer_outputs(i, x[:, i])
            out[:, i:] += part
            rows.append(sel.rows)
            cols.append(sel.cols + i * self.local_latents)
            values.append(sel.values)
        r, order = torch.sort(torch.cat(rows), stable=True)
        return out + self.b_dec, kernels.from_sorted(r, torch.cat(cols)[order],
                                                     torch.cat(values)[order], len(x))

    # --- training -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Output:
        """Training pass on x (B, L, d_model) and targets y (B, L, d_out)."""
        if y is None:
            raise ValueError("a cross-layer transcoder predicts targets: forward(x, y)")
        if self.kernel == "sparse":
            return self._forward_sparse(x, y)
        cfg, batch = self.cfg, x.shape[0]
        pres, codes, fired, smallest = [], [], [], []
        for i in range(self.layers):
            pre = self.into_slices(x[:, i]) @ self.W_encs[i] + self.b_encs[i]
            counts = None
            if cfg.arch == "batchtopk":
                z, counts = batch_topk_codes(pre, (cfg.k or 1) * batch)
                smallest.append(smallest_positive(z.flatten()))
            elif cfg.arch == "jumprelu":
                z = jump_relu(pre, self.log_thresholds[i].exp(), cfg.jump_bandwidth)
            elif cfg.arch == "topk":
                z, counts = topk_codes(pre, cfg.k or 1)
            else:
                z = torch.relu(pre)
            pres.append(pre)
            codes.append(z)
            fired.append((z > 0).sum(0) if counts is None else counts)
        if smallest:
            self._update_threshold(torch.stack(smallest))
        x_hat = self.over_slices(self._scatter(
            [z @ w for z, w in zip(codes, self.W_decs, strict=True)])) + self.b_dec
        terms = {"mse": ((x_hat - y) ** 2).sum((-2, -1)).mean()}
        if cfg.arch == "relu":
            l1 = torch.stack([z.abs().sum(-1) for z in codes]).sum(0)
            terms["l1_loss"] = cfg.l1 * self.over_slices(l1).mean()
        elif cfg.arch == "jumprelu":
            l0 = torch.stack([step(p, t.exp(), cfg.jump_bandwidth).sum(-1)
                              for p, t in zip(pres, self.log_thresholds, strict=True)]).sum(0)
            terms["l0_loss"] = cfg.l0 * self.over_slices(l0).mean()
        else:
            terms["aux_loss"] = cfg.aux_coef * self._dense_aux(y, x_hat, pres)
        counts_all = torch.stack(fired, 1)
        self._track(counts_all, batch)
        loss = torch.stack(list(terms.values())).sum()
        z_all = torch.cat(codes, 1)  # layer-major columns
        return Output(x_hat, z_all, loss, {k: v.detach() for k, v in terms.items()}, counts_all)

    def _dead_counts(self) -> list[int]:
        """Per layer, this dictionary's dead latents over every slice (one host sync)."""
        counts: list[int] = self.over_slices(self.dead_mask().sum(0)).tolist()
        return counts

    def _dense_aux(self, y: torch.Tensor, x_hat: torch.Tensor, pres: list[torch.Tensor]
                   ) -> torch.Tensor:
        """AuxK per layer: each layer's dead latents' top k_aux, together, reconstruct the
        residual of every target."""
        dead, counts = self.dead_mask(), self._dead_counts()
        if not any(counts):
            return y.new_zeros(())
        k = self.cfg.aux_k or 2 * (self.cfg.k or 1)
        parts = [topk_codes(p.masked_fill(~dead[:, i], float("-inf")), min(k, c))[0] @ w
                 if c else p.new_zeros(len(p), w.shape[1])
                 for i, (p, w, c) in enumerate(zip(pres, self.W_decs, counts, strict=True))]
        aux = self._scatter(parts)
        return ((aux - (y - x_hat).detach()) ** 2).sum((-2, -1)).mean()

    def _forward_sparse(self, x: torch.Tensor, target: torch.Tensor) -> Output:
        """The SAE's sparse step layer by layer: no (batch, latents) tensor for any layer."""
        cfg, batch, n = self.cfg, x.shape[0], self.local_latents
        k, top = cfg.k or 1, cfg.arch == "topk"
        dead, k_aux = self.dead_mask(), [min(cfg.aux_k or 2 * k, c) for c in self._dead_counts()]
        mains, auxes, codes_out, fired, smallest = [], [], [], [], []
        for i in range(self.layers):
            xc = self.into_slices(x[:, i])
            main: kernels.Accumulator = (kernels.RowTopK(batch, k, x.device) if top
                                         else kernels.BatchTopK(batch, n, k * batch, x.device))
            accs = [main] + ([kernels.RowTopK(batch, k_aux[i], x.device, dead[:, i])]
                             if k_aux[i] else [])
            found = kernels.select(xc.detach(), self.W_encs[i], self.b_encs[i], accs)
            sels = [self.winners(found[0], k if top else k * batch, by_row=top)]
            if k_aux[i]:
                sels.append(self.winners(found[1], k_aux[i], by_row=True))
            codes = [torch.relu(v) for v in
                     kernels.selected(xc, self.W_encs[i], self.b_encs[i], sels)]
            decoded = kernels.decode(sels, codes, self.W_decs[i])
            mains.append(decoded[0])
            width = decoded[0].shape[1]
            auxes.append(decoded[1] if k_aux[i] else decoded[0].new_zeros(batch, width))
            z = codes[0].detach()
            fired.append(selection_counts(sels[0].cols, z > 0, n))
            codes_out.append(kernels.to_sparse(sels[0], z, n))
            smallest.append(smallest_positive(z))
        x_hat = self.over_slices(self._scatter(mains)) + self.b_dec
        terms = {"mse": ((x_hat - target) ** 2).sum((-2, -1)).mean(),
                 "aux_loss": x.new_zeros(())}
        if any(k_aux):
            aux_err = self.over_slices(self._scatter(auxes)) - (target - x_hat).detach()
            terms["aux_loss"] = cfg.aux_coef * (aux_err ** 2).sum((-2, -1)).mean()
        if cfg.arch == "batchtopk":
            self._update_threshold(torch.stack(smallest))
        counts = torch.stack(fired, 1)
        self._track(counts, batch)
        z_all = torch.cat(codes_out, 1)  # layer-major columns
        return Output(x_hat, z_all, terms["mse"] + terms["aux_loss"],
                      {name: v.detach() for name, v in terms.items()}, counts)

    # --- the decoder constraint, the bias ---------------------------------------------------

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Per latent, drop the gradient along its (concatenated) decoder row."""
        for w in self.W_decs:
            if w.grad is not None:
                along = torch.bmm(w.grad.unsqueeze(1), w.unsqueeze(2)).view(-1)
                w.grad.addcmul_((along / torch.linalg.vector_norm(w, dim=1).square())
                                .unsqueeze(1), w, value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        for w in self.W_decs:
            w.div_(w.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def init_bias(self, sample: torch.Tensor,
                  method: str = "geometric_median") -> None:
        """b_dec[j] at a centre of target j's rows (`sample`: (rows, L, d_out))."""
        for j in range(self.layers):
            rows = sample[:, j].float()
            self.b_dec[j].copy_(rows.mean(0) if method == "mean" else geometric_median(rows))
