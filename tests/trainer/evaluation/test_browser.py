"""The report's feature browser (trainer.evaluation.report.browser) on a dictionary of more
than 16k latents, rendered in a real headless Chromium from disk (file://): any latent's page
(the last: the last, partial shard) with its examples, histogram axes, quantile bands and
promoted tokens, loading only its own shard; search by token and by explanation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.trainer.evaluation.synthetic import NAME, synthetic_report
from trainer.evaluation.report import write_report
from trainer.evaluation.report.browser.shards import SHARD, bucket
from trainer.evaluation.report.html import page
from trainer.interpret.pipeline import Interpretation
from trainer.interpret.results import overlay

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LATENTS = 16_391  # >= 16k, and the last shard partial


def dom(report: Path, fragment: str) -> str:
    url = (report / "index.html").as_uri() + fragment
    done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120,
                          check=True)
    return done.stdout


def test_bucket_is_fnv1a_of_utf16_code_units() -> None:
    # FNV-1a 32 of "a": 0xe40c292c; of the empty string: the offset basis
    assert bucket("a", 1 << 32) == 0xE40C292C
    assert bucket("", 1 << 32) == 0x811C9DC5
    assert bucket("\U0001f600", 7) == bucket("\U0001f600", 7)  # a surrogate pair hashes


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_the_last_of_16k_latents_renders_and_is_found_by_token(tmp_path: Path) -> None:
    report = tmp_path / "report"
    ev, cfg, store, special = synthetic_report(report, LATENTS, rows=4096, top=8,
                                                 sample=8, window=4)
    write_report(ev, store, cfg)
    last = LATENTS - 1
    index = (report / "latents" / "index.js").read_text()
    assert json.loads(index[len("actstore.index("):-3])["methods"][NAME]["latents"] == LATENTS
    # an explanation, as actstore interpret leaves it
    result = Interpretation({"rows": 1}, {NAME: {"kind": "dictionary", "total": LATENTS}},
                            {NAME: {str(last): {"explanation": f"Zebra stripes, #{special}",
                                                "detection": 0.875, "fuzzing": None,
                                                "simulation": None}}})
    (report / "latents" / "interpret.js").write_text(
        f"actstore.interpret({json.dumps(overlay(result))});")
    summary = (report / "eval.json").read_text()
    (report / "index.html").write_text(page(summary, "", interpreted=True))

    shown = dom(report, f"#dict={NAME}&latent={last}")
    assert f"{NAME} latent {last}" in shown
    top = ev.tops[NAME]
    for r in top.rows[last].tolist():
        assert f'data-row="{r}"' in shown
    assert shown.count(f'<span class="tok">#{special}</span>') == len(top.rows[last])
    assert top.sample_rows is not None
    for r in top.sample_rows[last].tolist():  # the quantile bands' examples
        assert f'data-row="{r}"' in shown
    assert "quantile band 4 of 4" in shown
    for label in ("activation (log scale)", "density (of slice rows)", ">0.001<", ">1000<"):
        assert label in shown  # the histogram's axes
    assert shown.count('class="ytick"') == shown.count('class="dtick"') == 3
    assert 'class="tokens-up"' in shown
    assert 'class="tokens-down"' in shown
    assert f"explanation: Zebra stripes, #{special}" in shown
    assert "detection 0.875" in shown
    # lazily: the one shard of the latent shown, none of the other 64
    assert shown.count('src="latents/d0/') == 1
    assert f'src="latents/d0/{last // SHARD}.js"' in shown

    # its token: among the latents firing on it (the index), and in its explanation (words)
    found = dom(report, f"#search=%23{special}")
    tokens, words = found.split("<h3>explanations containing")
    assert f'href="#dict={NAME}&amp;latent={last}"' in tokens
    assert f"{NAME} {last} ({len(top.rows[last])} of its top)" in tokens
    assert f'href="#dict={NAME}&amp;latent={last}"' in words
    assert f"Zebra stripes, #{special}" in words
