"""The report's index.html (trainer.evaluation.report.html), rendered in a real headless
Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from actstore.store.activation_store import ActivationStore
from tests.trainer.evaluation.helpers import _run
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.report import write_report
from trainer.evaluation.run import evaluate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_index_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    run, _, _ = _run(tmp_path, 0.5)
    cfg = EvalConfig(run=str(run), out=str(tmp_path / "report"), ks=(1, 2), top=3, show=12,
                     ica="none")
    ev = evaluate(cfg)
    write_report(ev, ActivationStore.open(ev.meta["store"]), cfg)
    pages = json.loads((tmp_path / "report" / "latents.json").read_text())
    name = "neurons-relu"
    latent, page = next(iter(pages["dictionaries"][name]["pages"].items()))

    def dom(fragment: str) -> str:
        url = (tmp_path / "report" / "index.html").as_uri() + fragment
        done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                               "--dump-dom", url], capture_output=True, text=True, timeout=120,
                              check=True)
        return done.stdout

    shown = dom(f"#dict={name}&latent={latent}")
    assert f"{name} latent {latent}" in shown  # the script ran and rendered the page
    for e in page["examples"]:
        assert f'data-row="{e["row"]}"' in shown
        assert f'<span class="tok">{e["token"]}</span>' in shown
    assert "Tokens it promotes and suppresses: skipped (the weights of tiny-random did not " \
        "load" in shown  # the store's model is a name with no weights on disk
    assert "neurons-relu</td>" in shown  # the metrics table
    assert shown.count("<tr>") >= 3
    missing = dom(f"#dict={name}&latent=99999")
    assert "latent 99999 of neurons-relu has no page: it has 12 latents" in missing
