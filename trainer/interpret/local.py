"""A local `transformers` causal LM as the explainer and scorer (`--llm PATH`, no
--endpoint), in this process, one request at a time, greedy: the same Reply an
OpenAI-compatible server gives, log-probs included (the top alternatives at each step)."""

from __future__ import annotations

import threading
from typing import Any

import torch

from trainer.interpret.llm import TOP_LOGPROBS, EndpointError, Reply, Request, TokenLogprobs


class LocalBackend:
    """`AutoModelForCausalLM` from a local folder (never downloaded)."""

    concurrency = 1

    def __init__(self, path: str, device: str = "cpu") -> None:
        import transformers

        try:
            self.tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            model: Any = transformers.AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True)
            self.model = model.to(device).eval()
        except (OSError, ValueError) as e:
            raise EndpointError(f"--llm {path}: not a local transformers causal LM (pass "
                                f"--endpoint URL to use a served model): {e}") from e
        self.name, self.device = f"local:{path}", device
        self._lock = threading.Lock()

    def prompt_ids(self, request: Request) -> torch.Tensor:
        """The chat as token ids: the tokenizer's chat template, or plain turns without one."""
        messages = [{"role": "system", "content": request.system},
                    {"role": "user", "content": request.user}]
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
        else:
            text = f"{request.system}\n\nUser: {request.user}\n\nAssistant:"
        ids: torch.Tensor = self.tok(text, return_tensors="pt",
                                     add_special_tokens=False)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None) or ids.shape[1]
        return ids[:, -max(1, limit - request.max_tokens):].to(self.device)

    def send(self, request: Request) -> Reply:
        ids = self.prompt_ids(request)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else \
            self.tok.eos_token_id
        with self._lock, torch.no_grad():
            out: Any = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=request.max_tokens,
                do_sample=False, output_scores=request.logprobs, return_dict_in_generate=True,
                pad_token_id=pad if pad is not None else 0)
        new = out.sequences[0, ids.shape[1]:].tolist()
        text = str(self.tok.decode(new, skip_special_tokens=True))
        if not request.logprobs:
            return Reply(text)
        steps = []
        for token, scores in zip(new, out.scores, strict=False):
            logp = torch.log_softmax(scores[0].float(), -1)
            top = torch.topk(logp, min(TOP_LOGPROBS, logp.numel()))
            steps.append(TokenLogprobs(
                str(self.tok.decode([token])), float(logp[token]),
                {str(self.tok.decode([int(i)])): float(v)
                 for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)}))
        return Reply(text, steps)
