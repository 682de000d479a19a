"""TRL reward functions: ``f(prompts, completions, answer, **kwargs) -> list[float]``.

``completions`` are plain strings or conversational (``[{"role": "assistant", "content": ...}]``); ``answer`` is
the dataset's gold column (the normalised final answer, e.g. ``"18"``; a full GSM8K solution ending in
``#### 18`` also works). Extraction is ``pspo.grading.extract_answer``.

``paper_reward`` is the paper's shaped reward: 1.0 if the extracted number equals the gold within 1e-6,
+0.05 if a ``#### <number>`` line is present, -0.2 if the completion has no number at all, clipped to [0, 1].
After clipping it takes only three values: 1.0 (correct, formatted or not), 0.05 (wrong but formatted), 0.0.
(The -0.2 never shows: a completion without a number has no '#### <number>' line either, so 0 - 0.2 clips to 0.)
"""

from __future__ import annotations

from typing import Any, Sequence

from pspo.grading import extract_answer, is_formatted, numbers_equal, to_number

TOLERANCE = 1e-6
CORRECT_REWARD = 1.0
FORMAT_BONUS = 0.05
NO_NUMBER_PENALTY = -0.2


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the concatenated contents of a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        return "".join(
            str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in completion
        )
    return "" if completion is None else str(completion)


def _gold_value(gold: Any):
    if isinstance(gold, (int, float)):
        return to_number(repr(gold) if isinstance(gold, float) else str(gold))
    value = to_number(str(gold))
    if value is None:  # e.g. a full GSM8K solution "... #### 18"
        value = to_number(extract_answer(str(gold)))
    return value


def _check(completions: Sequence[Any], answer: Sequence[Any]) -> None:
    if answer is None:
        raise ValueError("reward function needs the dataset column 'answer' (the gold final answer)")
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")


def score_completion(text: str, gold: Any) -> float:
    """The paper's shaped reward for one completion text."""
    pred_str = extract_answer(text)
    shaped = FORMAT_BONUS if is_formatted(text) else 0.0
    if pred_str is None:
        return max(0.0, min(1.0, shaped + NO_NUMBER_PENALTY))
    correct = numbers_equal(to_number(pred_str), _gold_value(gold), rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    return max(0.0, min(1.0, (CORRECT_REWARD if correct else 0.0) + shaped))


def paper_reward(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                 answer: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
    """The paper's reward (correct 1.0, '####' format +0.05, no number -0.2, clipped to [0, 1])."""
    _check(completions, answer)
    return [score_completion(completion_text(c), g) for c, g in zip(completions, answer)]


def correctness_reward(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                       answer: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
    """1.0 if the extracted number equals the gold within 1e-6, else 0.0 (no shaping)."""
    _check(completions, answer)
    out = []
    for c, g in zip(completions, answer):
        pred = to_number(extract_answer(completion_text(c)))
        out.append(1.0 if numbers_equal(pred, _gold_value(g), rel_tol=TOLERANCE, abs_tol=TOLERANCE) else 0.0)
    return out


# TRL logs each reward as rewards/<__name__>/mean; keep these equal to the import names
paper_reward.__name__ = "paper_reward"
correctness_reward.__name__ = "correctness_reward"

REWARD_FUNCTIONS = {"paper": paper_reward, "correctness": correctness_reward}

__all__ = ["paper_reward", "correctness_reward", "score_completion", "completion_text", "REWARD_FUNCTIONS"]
