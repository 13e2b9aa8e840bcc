"""The scores on crafted cases with known answers, and the parsing of answers."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.interpret import prompts
from trainer.interpret.llm import Reply, TokenLogprobs
from trainer.interpret.scores import balanced_accuracy, pearson


def test_balanced_accuracy_of_perfect_inverted_constant_and_random_scorers() -> None:
    labels = [1] * 30 + [0] * 70  # unbalanced on purpose: accuracy would reward "always 0"
    assert balanced_accuracy(labels, labels) == 1.0
    assert balanced_accuracy(labels, [1 - y for y in labels]) == 0.0
    assert balanced_accuracy(labels, [1] * 100) == 0.5
    assert balanced_accuracy(labels, [0] * 100) == 0.5
    gen = np.random.default_rng(0)
    big = gen.integers(0, 2, 20_000)
    assert balanced_accuracy(big, gen.integers(0, 2, 20_000)) == pytest.approx(0.5, abs=0.02)
    # by hand: recall of 1s is 2/3, of 0s 1/2
    assert balanced_accuracy([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(7 / 12)
    assert balanced_accuracy([1, 1], [1, 0]) is None  # one class: no balanced accuracy


def test_simulation_correlation() -> None:
    true = [0.0, 0.0, 2.5, 1.0, 0.0, 4.0]
    assert pearson([3 * t + 1 for t in true], true) == pytest.approx(1.0)
    assert pearson([-t for t in true], true) == pytest.approx(-1.0)
    assert pearson([5.0] * 6, true) == 0.0  # constant predictions say nothing
    assert pearson([1.0, 2.0], [0.0, 0.0]) is None
    a, b = [1.0, 2.0, 4.0, 3.0], [1.0, 3.0, 2.0, 5.0]
    assert pearson(a, b) == pytest.approx(float(np.corrcoef(a, b)[0, 1]))


def test_answers_are_parsed_or_called_malformed() -> None:
    assert prompts.parse_labels(Reply("Sure: [1, 0,1]"), 3) == [1, 0, 1]
    for bad in ("[1, 0]", "1 0 1", "[1, 2, 0]", "[yes, no, yes]", ""):
        assert prompts.parse_labels(Reply(bad), 3) is None, bad
    assert prompts.parse_explanation(Reply('\n Explanation: "the word cat"\nmore')) == \
        "the word cat"
    assert prompts.parse_explanation(Reply("   \n")) is None
    assert prompts.parse_explanation(Reply("x" * 400)) is None


def test_simulated_values_are_expected_digits_from_log_probs() -> None:
    half = float(np.log(0.5))
    steps = [TokenLogprobs("3", half, {"3": half, "7": half}),
             TokenLogprobs(" ", 0.0, {" ": 0.0}),
             TokenLogprobs(" 0", 0.0, {" 0": 0.0, "x": -5.0})]
    assert prompts.parse_simulation(Reply("3 0", steps), 2) == pytest.approx([5.0, 0.0])
    assert prompts.parse_simulation(Reply("3 0", steps), 3) is None  # a digit missing
    assert prompts.parse_simulation(Reply("3 0"), 2) is None  # no log-probs


def test_marks_merge_neighbours_and_leave_the_space_outside() -> None:
    pieces = ["The", " cat", " sat", " down", "."]
    assert prompts.marked(pieces, [1, 2]) == "The <<cat sat>> down."
    assert prompts.marked(pieces, [0, 4]) == "<<The>> cat sat down<<.>>"
