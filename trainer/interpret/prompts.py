"""The prompts (delphi's tasks, the seed paper's simulation, in our words) and the parsing of
their answers. Nothing in a prompt says which windows activate but the marks the task shows:
the explainer's marks on its own windows, fuzzing's marks (right or wrong) on the scored ones.

    explain:  marked top windows            ──▶ one line: the explanation
    detect:   explanation + unmarked windows ──▶ [1, 0, …] one per window
    fuzz:     explanation + marked windows   ──▶ [1, 0, …] are the marks what it describes
    simulate: explanation + one window's tokens ──▶ a digit 0-9 per token, read from log-probs
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from trainer.interpret.llm import Reply, Request, TokenLogprobs

#: The longest explanation kept (characters); a longer answer is malformed.
MAX_EXPLANATION = 300

EXPLAIN = ("You study one feature of a neural network that reads text. You are shown text "
           "windows where it activates; the tokens it activates on are marked <<like this>>. "
           "Reply with one short explanation of what the feature detects (a phrase of at most "
           "15 words), on one line, and nothing else.")
DETECT = ("A feature of a neural network is explained as: {explanation}\n"
          "For each numbered text below, say whether the feature activates anywhere in it. "
          "Reply only with a list of {n} numbers, 1 for yes and 0 for no, like [{example}].")
FUZZ = ("A feature of a neural network is explained as: {explanation}\n"
        "In each numbered text below some tokens are marked <<like this>>. Say whether the "
        "marked tokens are what the explanation describes. Reply only with a list of {n} "
        "numbers, 1 for yes and 0 for no, like [{example}].")
SIMULATE = ("A feature of a neural network is explained as: {explanation}\n"
            "Below are the {n} tokens of a text, one per line. Predict the feature's activation "
            "on each, from 0 (none) to 9 (strongest). Reply only with {n} digits separated by "
            "spaces, one per token, in order.")


def pieces_of(decode: Callable[[Sequence[int]], str], ids: Sequence[int]) -> list[str]:
    """Each token's text as it appears in the decoded window (decoded as growing prefixes so
    the tokenizer's spacing survives; a token decoded alone where a prefix does not extend)."""
    out, before = [], ""
    for i in range(len(ids)):
        upto = decode(ids[:i + 1])
        out.append(upto[len(before):] if upto.startswith(before) else decode(ids[i:i + 1]))
        before = upto
    return out


def marked(pieces: Sequence[str], marks: Sequence[int]) -> str:
    """The window's text with the tokens at `marks` inside <<…>> (neighbours merged, the
    space before a word left outside)."""
    hot, text, i = set(marks), [], 0
    while i < len(pieces):
        if i not in hot:
            text.append(pieces[i])
            i += 1
            continue
        j = i
        while j < len(pieces) and j in hot:
            j += 1
        span = "".join(pieces[i:j])
        bare = span.lstrip()
        text.append(f"{span[:len(span) - len(bare)]}<<{bare}>>")
        i = j
    return "".join(text).replace("\n", " ")


def numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))


def explain(texts: Sequence[str], max_tokens: int) -> Request:
    return Request(EXPLAIN, numbered(texts), max_tokens)


def _example(n: int) -> str:
    return ", ".join("1" if i % 2 == 0 else "0" for i in range(n))


def detect(explanation: str, texts: Sequence[str], max_tokens: int) -> Request:
    head = DETECT.format(explanation=explanation, n=len(texts), example=_example(len(texts)))
    return Request(head, numbered(texts), max_tokens)


def fuzz(explanation: str, texts: Sequence[str], max_tokens: int) -> Request:
    head = FUZZ.format(explanation=explanation, n=len(texts), example=_example(len(texts)))
    return Request(head, numbered(texts), max_tokens)


def simulate(explanation: str, pieces: Sequence[str]) -> Request:
    head = SIMULATE.format(explanation=explanation, n=len(pieces))
    lines = "\n".join(repr(p) for p in pieces)
    return Request(head, lines, 2 * len(pieces) + 8, logprobs=True)


def parse_explanation(reply: Reply) -> str | None:
    """The first non-empty line (a leading "Explanation:" and quotes dropped); None when there
    is none or it is too long."""
    for line in reply.text.splitlines():
        text = re.sub(r"^\s*(explanation\s*:)?\s*", "", line, flags=re.IGNORECASE)
        text = text.strip().strip("\"'`").strip()
        if text:
            return text if len(text) <= MAX_EXPLANATION else None
    return None


def parse_labels(reply: Reply, n: int) -> list[int] | None:
    """The first [..] list in the answer, when it holds exactly `n` values each 0 or 1."""
    found = re.search(r"\[([^\[\]]*)\]", reply.text)
    if found is None:
        return None
    values = [v.strip() for v in found.group(1).split(",")]
    if len(values) != n or any(v not in ("0", "1") for v in values):
        return None
    return [int(v) for v in values]


def digit_mean(step: TokenLogprobs) -> float | None:
    """The expected digit at one generated token: the digit alternatives' probabilities,
    renormalised (None when the token itself is no digit)."""
    if not _digit(step.token):
        return None
    options = dict(step.top)
    options.setdefault(step.token, step.logprob)
    weights: dict[int, float] = {}
    for token, logprob in options.items():
        if _digit(token):
            d = int(token.strip())
            weights[d] = weights.get(d, 0.0) + math.exp(logprob)
    total = sum(weights.values())
    return sum(d * w for d, w in weights.items()) / total


def parse_simulation(reply: Reply, n: int) -> list[float] | None:
    """The expected activation of each of `n` tokens: the digit tokens of the answer, in
    order, each its expectation under the log-probs; None without exactly `n` of them or
    without log-probs."""
    if reply.logprobs is None:
        return None
    values = [v for v in map(digit_mean, reply.logprobs) if v is not None]
    return values if len(values) == n else None


def _digit(token: str) -> bool:
    t = token.strip()
    return len(t) == 1 and t in "0123456789"
