"""Training metrics (trainer.training.metrics): logged L0, FVU and MSE match the codes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.ensemble import Ensemble, adam
from trainer.training.metrics import Meter

# jumprelu's L0 coefficient is far from 1, so a penalty logged as "l0" would show.
KNOBS: dict[str, dict[str, Any]] = {"relu": {"l1": 0.3}, "topk": {"k": 5},
                                    "batchtopk": {"k": 5}, "jumprelu": {"l0": 0.05}}


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("arch", list(KNOBS))
def test_logged_l0_fvu_and_mse_match_the_codes(arch: str, kind: str) -> None:
    """An SAE's metrics are of its input; a (skip) transcoder's, 16 wide to 8, of its target."""
    torch.manual_seed(0)
    shape: dict[str, Any] = ({"kind": "transcoder", "d_out": 8, "skip": True}
                             if kind == "transcoder" else {})
    cfg = DictionaryConfig(arch=arch, d_model=16, latents=64, dead_after_tokens=10**6,  # type: ignore[arg-type]
                           **KNOBS[arch], **shape)
    ens = Ensemble([cfg], adam(1e-3), seed=0)
    meter = Meter(ens.members, torch.device("cpu"))
    l0s, sse, ssdev, rows = [], 0.0, 0.0, 0
    seen = torch.zeros(64, dtype=torch.bool)
    for _ in range(3):
        x = torch.randn(32, 16) * 2 + 1
        y = torch.randn(32, 8) * 3 - 1 if kind == "transcoder" else None
        (out,) = ens.step(x, y=y)
        target = x if y is None else y
        meter.add(target, [out])
        z = out.z.to_dense() if out.z.is_sparse else out.z  # sparse from the sparse step
        l0s.append((z.detach() != 0).sum(-1).float().mean())
        # the counts come from the selections (topk, batchtopk): the same as a dense pass
        assert torch.equal(out.fired, (z.detach() != 0).sum(0))
        seen |= (z.detach() != 0).any(0)
        sse += float(((out.x_hat.detach() - target) ** 2).sum())
        ssdev += float(((target - target.mean(0)) ** 2).sum())
        rows += len(x)
    (line,) = meter.flush()
    assert line["l0"] == pytest.approx(float(torch.stack(l0s).mean()), rel=1e-6)
    assert line["l0"] > 1  # not a penalty term scaled by a small coefficient
    assert line["silent"] == int((~seen).sum())
    assert line["mse"] == pytest.approx(sse / rows, rel=1e-5)
    assert line["fvu"] == pytest.approx(sse / ssdev, rel=1e-5)
    penalty = {"relu": "l1_loss", "jumprelu": "l0_loss"}.get(arch, "aux_loss")
    assert penalty in line
