"""Answer extraction and grading for GSM8K, SVAMP, ASDiv (numeric) and MATH-500 (Math-Verify).

Which rule a benchmark uses is ``pspo.benchmarks``' ``grader``.

Extraction (``extract_answer``), in this order:

1. the last ``#### <number>`` line (exactly four ``#``; ``#####`` is a markdown header), else the last ``####``
   line holding a number anywhere (``#### The answer is 18``): the first number after ``####``, after the last
   ``=`` if the line is an equation (``#### 2 + 3 = 5`` gives 5);
2. else the last ``\\boxed{...}``: the first number inside it (same ``=`` rule);
3. else the last number anywhere in the text.

A "number" is ``-12``, ``1,080`` (thousands commas), ``3.5``, ``.5``, ``3/4``, ``\\frac{14}{3}`` / ``\\dfrac`` /
``\\tfrac`` / ``\\frac12``, optionally after ``$`` or ``\\$``; ``%`` and units are ignored (``25%`` is 25). A ``-``
is a sign only when it does not follow a letter, digit or closing bracket (``16-3`` gives 3, not -3). The
extracted string is canonical: no commas, no ``$``, LaTeX fractions as ``a/b``.

Rule for answers that end a sentence (every benchmark): trailing sentence punctuation (``. ! ? ; : ,``), whitespace
and a pair of markdown emphasis markers around the answer (``**x**``, ``*x*``, ``__x__``, ``_x_``) are not part of
it, nor is an unmatched emphasis mark or closing bracket at its end (``13/6**.``, ``13/6.)``), so ``#### **3.5**.`` is
3.5 and counts as formatted, while ``3.5``, ``1,080``, ``5:6``, ``52_8`` and the brackets of ``(1, 2]`` keep their
characters. A ``!`` after an answer in prose ends the sentence (``The answer is 5!`` is 5); inside math (``$5!$``,
``\\(5!\\)``, ``\\boxed{5!}``) it is a factorial, for every benchmark (the numeric graders evaluate ``N!``).

Numeric grading compares exact rationals: correct iff ``|pred - gold| <= max(abs_tol, rel_tol * |gold|)``
(both 1e-6 by default, the paper's tolerance). Choices made for ASDiv (``grade("asdiv", ...)``):

* rounded golds (``3.333`` for 10/3, ``3.14``, money ``0.46``): a prediction also counts if rounding it
  half-up to the gold's number of decimals gives the gold (``10/3`` and ``3.3333`` match ``3.333``;
  ``3.33`` does not). This can accept ``2.54`` for a gold ``2.5``; it affects only the 60 non-integer golds.
* fraction golds ``a/b`` are numbers (``2.5`` matches ``5/2``).
* multi-number golds ``"5; 15; 20"``: the prediction must give the same values **in the same order**: the
  numbers of the ``####`` line (else of the last ``\\boxed{}``, else the last *n* numbers of the text).
  (The PAL-2096 subset replaces these golds by their first value; see ``pspo.data.select_eval_rows``.)
* non-numeric golds (ratio ``5:6``, time ``3:30 p.m.``, text ``Yes``): case- and space-insensitive string
  match against the ``####`` line / ``\\boxed{}`` content (best effort; the prompt asks for a number).

MATH-500 (``grade_math``) uses Math-Verify: the gold is wrapped as ``$gold$`` (so ``11\\sqrt2`` parses as
11*sqrt(2), not 11), the prediction is the ``####`` line's content wrapped the same way if there is one; with no
``####`` line and no ``\\boxed{}``, the ``X`` of the last "The answer is X." / "Answer: X", else of an undelimited
final statement ("Hence the value is X!", "So x = \\dfrac{13}{6}.", a last line "X."), if ``X`` has no prose words;
else the whole completion (boxed answers first). Math-Verify's timeouts use ``signal.alarm``, which works only
in the main thread of a process: they are on in any process's main thread (including ``ProcessPoolExecutor``
workers, see ``grade_many``) and off, with a one-time warning, in other threads.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Sequence

from pspo import benchmarks

log = logging.getLogger(__name__)

GRADED_BENCHMARKS = benchmarks.LOADABLE  # every benchmark has a grading rule (pspo.benchmarks: ``grader``)
MATH_TIMEOUT_SECONDS = 5

# ---------------------------------------------------------------------------------------------- number tokens
_UNUM = r"(?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?|\.\d+"  # unsigned: 1,080 / 12 / 3.5 / .5
# a minus that is not a binary minus: not after a letter/digit/closing bracket/'.' ('_' is allowed: '_-7_' emphasis)
_SIGN = r"(?<![^\W_])(?<![)\]}.])[-\u2212]"
_DOLLAR = r"(?:\\?\$)?"
_NUMBER_RE = re.compile(
    rf"(?P<sign>{_SIGN}\s*)?{_DOLLAR}\s*(?:"
    rf"\\[dt]?frac\s*\{{\s*(?P<fn>-?(?:{_UNUM}))\s*\}}\s*\{{\s*(?P<fd>-?(?:{_UNUM}))\s*\}}"  # \frac{a}{b}
    rf"|\\[dt]?frac(?P<sn>\d)(?P<sd>\d)"  # \frac12
    rf"|(?<![\d.])(?P<p>{_UNUM})(?:/(?P<pd>{_UNUM}))?"  # 12, 1,080, 3/4 (not the tail of 10.5.3)
    r")"
)
_HASH_LINE_RE = re.compile(r"(?<!#)####(?!#)[ \t]*([^\n]*)")  # exactly four: not a ##### header
_FORMATTED_RE = re.compile(  # '#### <number>', the number maybe after emphasis ('**', '*', '__', '_'), '-', '$'
    r"(?<!#)####(?!#)[ \t]*(?:\*{1,2}|_{1,2})?[ \t]*(?:\\?\$)?[ \t]*[-\u2212]?[ \t]*(?:\\?\$)?[ \t]*"
    r"(?:\d|\.\d|\\[dt]?frac)"
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# What ends a sentence after an answer: . ! ? ; : , and whitespace (with a LaTeX spacing '\,' '\;' '\!' '\:' too,
# so no lone '\' is left). Only trailing ones: '3.5', '1,080', '5:6' keep theirs.
_TRAILING_PUNCT_RE = re.compile(r"(?:\\?[.!?;:,]|\s)+$")
_EMPHASIS = ("**", "__", "*", "_")  # markdown bold / italics, longest first


_TRAILING_MATH_PUNCT_RE = re.compile(r"(?:\\?[.?;:,]|\s)+$")  # inside $...$ a '!' is a factorial
_OPEN, _CLOSE = "([{", ")]}"


def _strip_decor(s: str, *, in_math: bool = False) -> str:
    """An answer without the sentence punctuation after it and the markdown emphasis around it ('**3.5**.' -> '3.5').

    Emphasis is removed as a matching pair around the whole answer, or as an unmatched mark at its end ('13/6**.'),
    so a '_' inside ('52_8') stays; a closing bracket at the end goes only if it closes nothing ('13/6.)'), so the
    brackets of '(1, 2]' stay. ``in_math``: the answer was inside math delimiters, where '!' is a factorial."""
    trailing = _TRAILING_MATH_PUNCT_RE if in_math else _TRAILING_PUNCT_RE
    prev = None
    while s != prev:  # '**42.**' and '**42**.' both need two rounds
        prev = s
        s = trailing.sub("", s.strip())
        for mark in _EMPHASIS:
            if len(s) > 2 * len(mark) and s.startswith(mark) and s.endswith(mark):
                s = s[len(mark) : -len(mark)].strip()
                break
            if len(s) > len(mark) and s.endswith(mark) and not s.startswith(mark[0]):
                s = s[: -len(mark)].strip()
                break
        if s and s[-1] in _CLOSE and sum(map(s.count, _OPEN)) < sum(map(s.count, _CLOSE)):
            s = s[:-1]
    return s


# A factorial is read only inside math ($5!$, \(5!\), \boxed{5!}): in prose a '!' after an answer ends the sentence.
_FACTORIAL_RE = re.compile(r"(?<![\d.,/])(\d{1,2})!(?!=)")
_MATH_SPAN_RE = re.compile(r"\$[^$\n]+\$|\\\(.*?\\\)|\\boxed\s*\{[^{}]*\}")


def _expand_factorials(text: str) -> str:
    """``N!`` (N < 100) inside math spans replaced by its value, for the numeric graders ('$5!$' is 120)."""
    if "!" not in text:
        return text
    return _MATH_SPAN_RE.sub(lambda m: _FACTORIAL_RE.sub(lambda f: str(math.factorial(int(f[1]))), m[0]), text)


def _clean(num: str) -> str:
    return num.replace(",", "")


def _token_str(m: re.Match) -> str:
    sign = "-" if m.group("sign") else ""
    if m.group("fn") is not None:
        num, den = _clean(m.group("fn")), _clean(m.group("fd"))
    elif m.group("sn") is not None:
        num, den = m.group("sn"), m.group("sd")
    else:
        num, den = _clean(m.group("p")), (_clean(m.group("pd")) if m.group("pd") else None)
    if sign and num.startswith("-"):  # -\frac{-1}{2}
        sign, num = "", num[1:]
    return f"{sign}{num}" + (f"/{den}" if den is not None else "")


def find_numbers(text: str) -> list[str]:
    """Every number in ``text``, canonical strings in order (see the module docstring)."""
    return [_token_str(m) for m in _NUMBER_RE.finditer(text)]


def to_number(s: str | None) -> Fraction | None:
    """An extracted/canonical number string (or a gold answer) as an exact Fraction; None if it is not one."""
    if s is None:
        return None
    s = s.strip().replace(",", "").replace("\u2212", "-").lstrip("$").strip()
    if s.endswith("%"):
        s = s[:-1].strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return Fraction(num.strip()) / Fraction(den.strip())
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` (balanced braces), in order."""
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _hash_content(text: str) -> str | None:
    """The '####' line the answer is read from: the last '#### <number>' line (so a later markdown header such as
    '#### Step 3: check' does not win), else the last '####' line holding a number anywhere; None if neither."""
    hashes = [c for c in _HASH_LINE_RE.findall(text) if find_numbers(c)]
    formatted = [c for c in hashes if _FORMATTED_RE.match("####" + c)]
    return (formatted or hashes or [None])[-1]


def _after_equals(segment: str) -> str:
    if "=" in segment:
        tail = segment.rsplit("=", 1)[1]
        if find_numbers(tail):
            return tail
    return segment


def _final_segment(text: str) -> tuple[str | None, str]:
    """(the text holding the final answer, where it came from: 'hash' | 'boxed' | 'text')."""
    content = _hash_content(text)
    if content is not None:
        return _after_equals(content), "hash"
    for content in reversed(_boxed_contents(text)):
        if find_numbers(content):
            return _after_equals(content), "boxed"
    return None, "text"


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a completion as a canonical string ('#### x', then \\boxed{x}, then last number)."""
    if not text:
        return None
    text = _expand_factorials(text)
    segment, _ = _final_segment(text)
    if segment is not None:
        return find_numbers(segment)[0]
    nums = find_numbers(text)
    return nums[-1] if nums else None


def is_formatted(text: str) -> bool:
    """True if the completion has a '#### <number>' line (the format the system prompt asks for)."""
    return bool(text) and _FORMATTED_RE.search(text) is not None


# ---------------------------------------------------------------------------------------------- numeric grading
@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None
    formatted: bool

    def __bool__(self) -> bool:  # `if grade_numeric(...)` reads as "if correct"
        return self.correct


def numbers_equal(
    pred: Fraction | None, gold: Fraction | None, *, rel_tol: float = 1e-6, abs_tol: float = 1e-6
) -> bool:
    """Exact-rational comparison: |pred - gold| <= max(abs_tol, rel_tol * |gold|); None is never equal."""
    if pred is None or gold is None:
        return False
    # tolerances as decimal strings: Fraction(1e-6) would be the binary float, a hair below 1e-6
    return abs(pred - gold) <= max(Fraction(repr(abs_tol)), Fraction(repr(rel_tol)) * abs(gold))


def _decimals(gold: str) -> int:
    g = gold.strip()
    return len(g.split(".", 1)[1]) if "." in g and "/" not in g else 0


def _rounds_to(pred: Fraction, gold_str: str) -> bool:
    k = _decimals(gold_str)
    if k == 0:
        return False
    q = Decimal(1).scaleb(-k)
    rounded = (Decimal(pred.numerator) / Decimal(pred.denominator)).quantize(q, rounding=ROUND_HALF_UP)
    return rounded == Decimal(gold_str.strip().replace(",", ""))


def _norm_text(s: str) -> str:
    s = s.replace("\\text", "").replace("**", "").replace("__", "")
    s = _strip_decor(re.sub(r"[{}$]", "", s)).lower()  # on gold and prediction alike: '3:30 p.m.' == '3:30 p.m'
    s = re.sub(r"\s*:\s*", ":", s)
    return re.sub(r"\s+", " ", s)


def grade_numeric(
    completion: str,
    gold: str,
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-6,
    rounded_gold: bool = False,
) -> Grade:
    """Grade a completion against a numeric gold (an integer, decimal, ``a/b`` or ``"5; 15; 20"``).

    ``rounded_gold``: also accept a prediction that rounds (half-up) to the gold at the gold's decimals.
    A gold that is not a number is compared as text (see the module docstring).
    """
    completion = _expand_factorials(completion or "")
    formatted = is_formatted(completion)
    gold = str(gold).strip()
    if ";" in gold:
        parts = [to_number(p) for p in gold.split(";")]
        if all(p is not None for p in parts):
            return _grade_multi(completion, parts, formatted, rel_tol=rel_tol, abs_tol=abs_tol)
    gold_value = to_number(gold)
    if gold_value is None:
        segment, origin = _final_segment(completion)
        if segment is None:
            hashes = [c for c in _HASH_LINE_RE.findall(completion) if c.strip()]
            boxes = _boxed_contents(completion)
            segment = hashes[-1] if hashes else (boxes[-1] if boxes else None)
        correct = segment is not None and bool(_norm_text(gold)) and _norm_text(segment) == _norm_text(gold)
        return Grade(correct, segment.strip() if segment is not None else None, formatted)
    extracted = extract_answer(completion)
    pred = to_number(extracted)
    correct = numbers_equal(pred, gold_value, rel_tol=rel_tol, abs_tol=abs_tol)
    if not correct and rounded_gold and pred is not None:
        correct = _rounds_to(pred, gold)
    return Grade(correct, extracted, formatted)


def _grade_multi(completion: str, golds: list[Fraction], formatted: bool, *, rel_tol: float, abs_tol: float) -> Grade:
    segment, origin = _final_segment(completion)
    if segment is not None:
        # the whole #### line / box, not just the part after '=' (so "#### A = 5, B = 15" keeps both values)
        if origin == "hash":
            segment = _hash_content(completion)
        else:
            segment = [c for c in _boxed_contents(completion) if find_numbers(c)][-1]
        preds = find_numbers(segment)
    else:
        preds = find_numbers(completion)[-len(golds) :]
    values = [to_number(p) for p in preds]
    correct = len(values) == len(golds) and all(
        numbers_equal(v, g, rel_tol=rel_tol, abs_tol=abs_tol) for v, g in zip(values, golds)
    )
    return Grade(correct, "; ".join(preds) if preds else None, formatted)


def grade_gsm8k(completion: str, gold: str) -> Grade:
    """GSM8K (and SVAMP): integer golds, tolerance 1e-6."""
    return grade_numeric(completion, gold)


# ---------------------------------------------------------------------------------------------- MATH (Math-Verify)
_TIMEOUT_WARNED = False


def _math_timeout(timeout: int | None) -> int | None:
    """Math-Verify's signal-based timeout only works in a process's main thread; elsewhere turn it off."""
    global _TIMEOUT_WARNED
    if not timeout:
        return None
    if threading.current_thread() is threading.main_thread():
        return int(timeout)
    if not _TIMEOUT_WARNED:
        log.warning(
            "grade_math called outside the main thread: Math-Verify's signal timeouts are disabled here; "
            "use pspo.grading.grade_many (process workers) for a hard time limit"
        )
        _TIMEOUT_WARNED = True
    return None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None):
    from math_verify import LatexExtractionConfig, parse

    g = gold.strip()
    if not g.startswith("\\boxed") and not g.startswith("$"):
        g = f"${g}$"
    parsed = parse(g, extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout)
    if not parsed:  # not LaTeX after all: let Math-Verify try plain expressions too
        parsed = parse(gold, parsing_timeout=timeout)
    return parsed


def _strip_math_delims(s: str) -> str:
    """A final answer without sentence punctuation, emphasis and one pair of math delimiters ('**$x$**.' -> 'x')."""
    s = _strip_decor(s)
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            return _strip_decor(s[len(left) : len(s) - len(right)], in_math=True)  # '$\frac34.$', '$5!$'
    return s


# "The answer is X" / "Answer: X" on one line: X is read like a '####' line (up to a sentence that follows it)
_ANSWER_PHRASE_RE = re.compile(r"\banswer\b[^\n]*?(?:\bis\b|:)[ \t]*:?(?P<ans>[^\n]*)", re.IGNORECASE)
_NEXT_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")  # '\sqrt{2}', '\text{(C)}': not prose words


def _answer_phrase(completion: str) -> str | None:
    """X of the last "answer is X" / "Answer: X", if X is a bare answer; None if X has words ('5, which is odd')."""
    phrases = list(_ANSWER_PHRASE_RE.finditer(completion))
    if not phrases:
        return None
    ans = _NEXT_SENTENCE_RE.split(phrases[-1].group("ans"), 1)[0]
    if re.search(r"[A-Za-z]{2,}", _LATEX_CMD_RE.sub("", ans)):
        return None  # prose: leave it to Math-Verify's reading of the whole completion, as before
    return ans


_STATEMENT_RE = re.compile(r"(?:\bis\b|=|:)(?P<ans>[^=:]*)$")
# math delimiters: a pair of unescaped '$' (one '$' is a currency sign), '\(', '\['
_DELIMITED_RE = re.compile(r"(?<!\\)\$[^$]*(?<!\\)\$|\\\(|\\\[")
_CURRENCY_RE = re.compile(r"\\?\$(?=\s*[-\u2212]?\s*[\d.])")  # '$18', '\$18'


def _final_statement(completion: str) -> str | None:
    """X of an undelimited final statement ("Hence the value is X!", "So x = \\dfrac{13}{6}.", a last line "X."),
    if X is a bare answer; None where math delimiters are used (Math-Verify reads those) or X has prose words."""
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    if not lines or _DELIMITED_RE.search(lines[-1]):
        return None
    line = _TRAILING_PUNCT_RE.sub("", _NEXT_SENTENCE_RE.split(lines[-1])[-1])  # 'is 1,080:' ends at the answer
    m = _STATEMENT_RE.search(line)
    ans = _CURRENCY_RE.sub("", m.group("ans") if m else line)
    if not re.search(r"\d|\\[A-Za-z]", ans) or re.search(r"[A-Za-z]{2,}", _LATEX_CMD_RE.sub("", ans)):
        return None
    return ans


def _parse_final(content: str, t: int | None):
    """Math-Verify parse of a final-answer string (a '####' line or an 'answer is' phrase) as LaTeX or an expression."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    # '**'/'__' anywhere ('**Answer: 7**' leaves '7**'); LaTeX has no use for them
    content = _strip_math_delims(content.replace("**", "").replace("__", ""))
    if not content:
        return []
    return parse(f"${content}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=t)


def grade_math(completion: str, gold: str, *, timeout: int | None = MATH_TIMEOUT_SECONDS) -> Grade:
    """MATH-500: Math-Verify equivalence between the gold (wrapped in ``$...$``) and the model's final answer."""
    from math_verify import parse, verify

    completion = completion or ""
    formatted = is_formatted(completion)
    t = _math_timeout(timeout)
    gold_parsed = _parse_gold(str(gold), t)
    pred = []
    hashes = [c for c in _HASH_LINE_RE.findall(completion) if c.strip()]
    if hashes:
        pred = _parse_final(hashes[-1], t)
    if not pred and not _boxed_contents(completion):
        # no '####' line or box: a closing "The answer is X." is read alone, so that Math-Verify neither misses an
        # undelimited '\sqrt{2}' nor reads 'X!' as a factorial or takes a number from an earlier sentence
        phrase = _answer_phrase(completion) or _final_statement(completion)
        if phrase is not None:
            pred = _parse_final(phrase, t)
    if not pred:
        pred = parse(completion, parsing_timeout=t)
    extracted = None
    if pred:
        extracted = str(pred[1]) if len(pred) > 1 else str(pred[0])
    correct = bool(gold_parsed) and bool(pred) and verify(gold_parsed, pred, timeout_seconds=t)
    return Grade(bool(correct), extracted, formatted)


# ---------------------------------------------------------------------------------------------- dispatch
def grade(benchmark: str, completion: str, gold: str) -> Grade:
    """Grade one completion with the benchmark's rule (see the module docstring)."""
    grader = benchmarks.get(benchmark).grader
    if grader == "math":
        return grade_math(completion, gold)
    return grade_numeric(completion, gold, rounded_gold=grader == "rounded")


def _grade_star(args: tuple[str, str, str]) -> Grade:
    return grade(*args)


def grade_many(
    benchmark: str, completions: Sequence[str], golds: Sequence[str], *, workers: int = 1, chunksize: int = 16
) -> list[Grade]:
    """Grade many completions; ``workers > 1`` uses a process pool (Math-Verify timeouts stay active there)."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    benchmarks.canonical(benchmark)
    jobs = [(benchmark, c, g) for c, g in zip(completions, golds)]
    if workers <= 1 or len(jobs) < 2 * chunksize:
        return [_grade_star(j) for j in jobs]
    import multiprocessing

    if benchmarks.get(benchmark).grader == "math":  # import once in the parent so forked workers inherit it
        import math_verify  # noqa: F401

    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_grade_star, jobs, chunksize=chunksize))


__all__ = [
    "Grade", "extract_answer", "find_numbers", "to_number", "is_formatted", "numbers_equal", "grade_numeric",
    "grade_gsm8k", "grade_math", "grade", "grade_many",
]
