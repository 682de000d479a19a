"""Reward functions: the paper's shaped reward and plain correctness, on the adversarial completions."""

from __future__ import annotations

import pytest

from pspo import data
from pspo.rewards import completion_text, correctness_reward, paper_reward, score_completion

# (completion, gold, paper_reward, correctness_reward)
# paper: 1.0 if correct (+0.05 format bonus clipped away), 0.05 if wrong but '#### <number>', 0.0 otherwise
REWARD_CASES = [
    ("#### 1,080", "1080", 1.0, 1.0),
    ("So she pays 1,080 dollars in total.", "1080", 1.0, 1.0),
    ("The total is $18.", "18", 1.0, 1.0),
    ("#### $18.00", "18", 1.0, 1.0),
    ("The discount is 25%.", "25", 1.0, 1.0),
    ("The temperature is -3 degrees.", "-3", 1.0, 1.0),
    ("Subtract: 10-3", "-3", 0.0, 0.0),
    ("First 3, then 5, finally 7", "3", 0.0, 0.0),
    ("I cannot solve this.", "5", 0.0, 0.0),  # no number: -0.2, clipped to 0
    ("", "5", 0.0, 0.0),
    ("**73**", "73", 1.0, 1.0),
    ("#### 72\nWait, actually it is 73", "72", 1.0, 1.0),
    ("#### 17", "18", 0.05, 0.0),  # wrong but formatted
    ("#### 7", "7", 1.0, 1.0),
    ("#### 8", "7", 0.05, 0.0),
    ("#### The answer is 18", "18", 1.0, 1.0),
    ("#### The answer is 17", "18", 0.0, 0.0),  # not a '#### <number>' line: no bonus
    ("#### -3", "-3", 1.0, 1.0),
    ("#### -4", "4", 0.05, 0.0),
    ("#### 1.0000001", "1", 1.0, 1.0),
    ("#### 1.00001", "1", 0.05, 0.0),
    ("x = \\frac{14}{3}", "3", 0.0, 0.0),
    ("#### \\frac{14}{3}", "3", 0.05, 0.0),
    ("\\boxed{42}", "42", 1.0, 1.0),
    ("#### 1/2", "0.5", 1.0, 1.0),
    ("between 3 and 5", "4", 0.0, 0.0),
    ("#### 5 + 3 = 8", "8", 1.0, 1.0),
]


@pytest.mark.parametrize("completion,gold,paper,correct", REWARD_CASES)
def test_reward_values(completion, gold, paper, correct):
    assert paper_reward(prompts=["q"], completions=[completion], answer=[gold]) == [pytest.approx(paper)]
    assert correctness_reward(prompts=["q"], completions=[completion], answer=[gold]) == [correct]
    # conversational completions give the same rewards
    conv = [[{"role": "assistant", "content": completion}]]
    assert paper_reward(["q"], conv, [gold]) == [pytest.approx(paper)]
    assert correctness_reward(["q"], conv, [gold]) == [correct]


def test_reward_range_and_batch():
    comps = [c for c, *_ in REWARD_CASES]
    golds = [g for _, g, *_ in REWARD_CASES]
    r = paper_reward(None, comps, golds, extra_column=[0] * len(comps))  # TRL passes other columns as kwargs
    assert len(r) == len(comps) and all(0.0 <= x <= 1.0 for x in r)
    assert set(r) <= {0.0, 0.05, 1.0}


def test_gold_as_full_solution_or_number():
    assert score_completion("#### 18", "Janet sells 9 eggs.\n#### 18") == 1.0
    assert score_completion("#### 1080", "1,080") == 1.0
    assert paper_reward(None, ["#### 18"], [18]) == [1.0]
    assert paper_reward(None, ["#### 0.5"], [0.5]) == [1.0]


def test_names_read_well_in_trl_logs():
    assert paper_reward.__name__ == "paper_reward"
    assert correctness_reward.__name__ == "correctness_reward"


def test_length_mismatch_and_missing_answer():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        paper_reward(None, ["a", "b"], ["1"])
    with pytest.raises(ValueError, match="column 'answer'"):
        correctness_reward(None, ["a"])


def test_completion_text_shapes():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text({"role": "assistant", "content": "c"}) == "c"
    assert completion_text(None) == ""


def test_gsm8k_references_get_full_reward(data_dir):
    rows = data.load_benchmark("gsm8k", data_dir=data_dir)
    rewards = paper_reward(None, [r["solution"] for r in rows], [r["answer"] for r in rows])
    assert rewards == [1.0] * len(rows)
    wrong = paper_reward(None, [r["solution"] for r in rows[1:]] + [rows[0]["solution"]], [r["answer"] for r in rows])
    assert sum(x == 1.0 for x in wrong) < 30  # shifted golds: almost all wrong, and formatted -> 0.05
    assert sum(x == 0.05 for x in wrong) > len(rows) - 30
