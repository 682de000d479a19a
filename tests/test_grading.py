"""Grading: gold self-grading on every benchmark, an adversarial table, MATH via Math-Verify, the `pspo grade` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from pspo import data, grading
from pspo.cli import run as pspo
from pspo.errors import PSPOError
from pspo.grading import Grade, extract_answer, grade, grade_many, grade_math, grade_numeric, is_formatted

# --------------------------------------------------------------------------------------------------- gold self-grading


def test_gsm8k_reference_solutions_all_correct(data_dir):
    for split in ("gsm8k", "gsm8k_train"):
        rows = data.load_benchmark(split, data_dir=data_dir)
        wrong = [r["id"] for r in rows if not grade(split, r["solution"], r["answer"]).correct]
        assert wrong == [], f"{split}: {len(wrong)} reference solutions graded wrong: {wrong[:10]}"
        # the '####' line is what the grader reads, and it counts as formatted
        assert all(is_formatted(r["solution"]) for r in rows)


@pytest.mark.parametrize("name", ["svamp", "asdiv"])
@pytest.mark.parametrize("fmt", ["#### {}", "The answer is {}.\n#### {}", "\\boxed{{{}}}", "So we get {} in total."])
def test_numeric_golds_formatted_grade_correct(data_dir, name, fmt):
    rows = data.load_benchmark(name, data_dir=data_dir)
    if name == "asdiv":
        rows = data.select_eval_rows(name, rows, subset="numeric")
        assert len(rows) == 2084
    wrong = [r["id"] for r in rows if not grade(name, fmt.format(r["answer"], r["answer"]), r["answer"]).correct]
    assert wrong == []


def test_asdiv_all_golds_including_multi_fraction_text(data_dir):
    rows = data.load_benchmark("asdiv", data_dir=data_dir)
    wrong = [r["id"] for r in rows if not grade("asdiv", f"#### {r['answer']}", r["answer"]).correct]
    assert wrong == []
    pal = data.select_eval_rows("asdiv", rows, subset="pal2096")
    assert [r["id"] for r in pal if not grade("asdiv", f"#### {r['answer']}", r["answer"]).correct] == []


# MATH-500 rows whose reference solution does not grade correct against `answer` (none with math-verify 0.9.0).
MATH500_SELF_GRADE_EXCEPTIONS: set[str] = set()


def test_math500_reference_solutions(data_dir):
    rows = data.load_benchmark("math500", data_dir=data_dir)
    t0 = time.perf_counter()
    grades = grade_many("math500", [r["solution"] for r in rows], [r["answer"] for r in rows], workers=2)
    elapsed = time.perf_counter() - t0
    wrong = {r["id"] for r, g in zip(rows, grades) if not g.correct}
    assert wrong == MATH500_SELF_GRADE_EXCEPTIONS
    assert 1 - len(wrong) / len(rows) >= 0.995
    assert elapsed < 60, f"MATH-500 self-grading took {elapsed:.1f}s"


def test_math500_answers_as_hash_lines(data_dir):
    rows = data.load_benchmark("math500", data_dir=data_dir)[:150]
    wrong = [r["id"] for r in rows if not grade("math500", f"Done.\n#### {r['answer']}", r["answer"]).correct]
    assert wrong == []


@pytest.mark.parametrize(
    "name,fmt",
    [("math500", "Done.\n#### **{}**!"), ("math500", "Done.\nThe answer is {}."), ("asdiv", "#### *{}*."),
     ("svamp", "The answer is __{}__;"), ("gsm8k", "#### {},")],
)
def test_golds_ending_a_sentence_grade_correct(data_dir, name, fmt):
    """Every gold, followed by sentence punctuation and wrapped in emphasis, still grades correct."""
    rows = data.load_benchmark(name, data_dir=data_dir)
    wrong = [r["id"] for r in rows if not grade(name, fmt.format(r["answer"]), r["answer"]).correct]
    assert wrong == []


# --------------------------------------------------------------------------------------------------- adversarial table
# (benchmark, completion, gold, correct, extracted, formatted)
NUMERIC_CASES = [
    ("gsm8k", "So she pays 1,080 dollars in total.", "1080", True, "1080", False),
    ("gsm8k", "#### 1,080", "1080", True, "1080", True),
    ("gsm8k", "#### 1,000,000", "1000000", True, "1000000", True),
    ("gsm8k", "The total is $18.", "18", True, "18", False),
    ("gsm8k", "#### $18.00", "18", True, "18.00", True),
    ("gsm8k", "#### \\$18", "18", True, "18", True),
    ("gsm8k", "The discount is 25%.", "25", True, "25", False),
    ("gsm8k", "She has 12 apples left.", "12", True, "12", False),
    ("gsm8k", "It is 20 km/h.", "20", True, "20", False),
    ("gsm8k", "The temperature is -3 degrees.", "-3", True, "-3", False),
    ("gsm8k", "#### -3", "-3", True, "-3", True),
    ("gsm8k", "#### \u22125", "-5", True, "-5", True),
    ("gsm8k", "#### -$4", "-4", True, "-4", True),
    ("gsm8k", "Subtract: 10-3", "-3", False, "3", False),  # binary minus is not a sign
    ("gsm8k", "16 - 3 - 4 = 9 eggs.\n#### 9", "9", True, "9", True),
    ("gsm8k", "The answer is 18.", "18", True, "18", False),  # trailing period
    ("gsm8k", "I think 20.\n\n#### 20.", "20", True, "20", True),
    ("gsm8k", "First 3, then 5, finally 7", "3", False, "7", False),  # several numbers: the last
    ("gsm8k", "3 packs of 12 pens is 36 pens, plus 5: 41", "41", True, "41", False),
    ("gsm8k", "I cannot solve this.", "5", False, None, False),  # no number
    ("gsm8k", "", "5", False, None, False),
    ("gsm8k", "**73**", "73", True, "73", False),
    ("gsm8k", "The answer is **73**.\n#### **73**", "73", True, "73", True),
    ("gsm8k", "#### 72\nWait, actually it is 73", "72", True, "72", True),  # '####' wins over the last number
    ("gsm8k", "#### 5 + 3 = 8", "8", True, "8", True),  # equation on the #### line: after the '='
    ("gsm8k", "#### The answer is 18", "18", True, "18", False),  # not '#### <number>'
    ("gsm8k", "#### 7", "7", True, "7", True),
    ("gsm8k", "#### Step 1: add\n3 + 4 = 7\n#### 7\n#### Step 2: check", "7", True, "7", True),  # header lines
    ("gsm8k", "#### Step 2: multiply\n2 * 4 = 8", "8", False, "2", False),  # only a header: read as the answer
    ("gsm8k", "##### 5 apples\nso 6", "6", True, "6", False),  # '#####' is not the answer marker
    ("gsm8k", "It is 1,2345", "2345", True, "2345", False),  # not a thousands group
    ("gsm8k", "Version 10.5.3", "10.5", True, "10.5", False),  # single digit (the authors' regex misses this format)
    ("gsm8k", "#### 17", "18", False, "17", True),
    ("gsm8k", "The answer is 3.0", "3", True, "3.0", False),
    ("gsm8k", "#### 1.0000001", "1", True, "1.0000001", True),  # within 1e-6
    ("gsm8k", "#### 1.00001", "1", False, "1.00001", True),
    ("gsm8k", "x = \\frac{14}{3}", "3", False, "14/3", False),  # \frac{14}{3} is not 3
    ("gsm8k", "\\boxed{42}", "42", True, "42", False),
    ("gsm8k", "It is 40, so \\boxed{42} and then 7 more steps", "42", True, "42", False),  # boxed beats last number
    ("gsm8k", "between 3 and 5", "4", False, "5", False),
    ("gsm8k", "The point is (2, 3).", "3", True, "3", False),
    ("gsm8k", "#### 1/2", "0.5", True, "1/2", True),
    ("gsm8k", "\\boxed{\\dfrac{1}{2}}", "0.5", True, "1/2", False),
    ("gsm8k", "#### \\tfrac12", "0.5", True, "1/2", True),
    ("gsm8k", "#### .5", "0.5", True, ".5", True),
    ("svamp", "#### 51 dollars", "51", True, "51", True),
    # ASDiv: fractions, rounded decimals, money, multi-number, non-numeric golds
    ("asdiv", "The answer is 0.5", "1/2", True, "0.5", False),
    ("asdiv", "#### 5/2", "5/2", True, "5/2", True),
    ("asdiv", "#### 2.5", "5/2", True, "2.5", True),
    ("asdiv", "#### -1/3", "-1/3", True, "-1/3", True),
    ("asdiv", "#### \\frac{14}{3}", "14/3", True, "14/3", True),
    ("asdiv", "#### 3.333", "3.333", True, "3.333", True),
    ("asdiv", "#### 10/3", "3.333", True, "10/3", True),  # rounds to the gold's 3 decimals
    ("asdiv", "#### 3.3333", "3.333", True, "3.3333", True),
    ("asdiv", "#### 3.33", "3.333", False, "3.33", True),
    ("asdiv", "It costs $0.46.", "0.46", True, "0.46", False),
    ("asdiv", "#### 46", "0.46", False, "46", True),
    ("asdiv", "#### 3.14", "3.14", True, "3.14", True),
    ("asdiv", "#### 5, 15, 20", "5; 15; 20", True, "5; 15; 20", True),
    ("asdiv", "#### Tom is 5, Ann is 15 and Bob is 20 years old", "5; 15; 20", True, "5; 15; 20", False),
    ("asdiv", "#### 15, 5, 20", "5; 15; 20", False, "15; 5; 20", True),  # order matters
    ("asdiv", "#### 5 and 15", "5; 15; 20", False, "5; 15", True),
    ("asdiv", "They are 5, 15 and 20 years old.", "5; 15; 20", True, "5; 15; 20", False),
    ("asdiv", "#### 5:6", "5:6", True, "5:6", True),
    ("asdiv", "#### 3:30 p.m.", "3:30 p.m.", True, "3:30 p.m.", True),
    ("asdiv", "#### Yes", "Yes", True, "Yes", False),
    ("asdiv", "#### No.", "Yes", False, "No.", False),
    # answers that end a sentence: trailing punctuation and markdown emphasis are not part of the answer
    ("gsm8k", "#### 3.5.", "3.5", True, "3.5", True),  # a decimal, then a full stop
    ("gsm8k", "#### 1,080!", "1080", True, "1080", True),
    ("gsm8k", "#### __-7__.", "-7", True, "-7", True),  # '_' before '-' does not make it a binary minus
    ("gsm8k", "The answer is _-7_!", "-7", True, "-7", False),
    ("gsm8k", "#### *42*;", "42", True, "42", True),  # '*' emphasis still counts as formatted
    ("gsm8k", "#### _42_", "43", False, "42", True),
    ("asdiv", "#### Yes!", "Yes", True, "Yes!", False),
    ("asdiv", "#### **Yes**.", "Yes", True, "**Yes**.", False),
    ("asdiv", "#### _No_", "Yes", False, "_No_", False),
    ("asdiv", "#### 5:6.", "5:6", True, "5:6.", True),
    ("asdiv", "#### 3:30 p.m", "3:30 p.m.", True, "3:30 p.m", True),
]


@pytest.mark.parametrize("bench,completion,gold,correct,extracted,formatted", NUMERIC_CASES)
def test_adversarial_numeric(bench, completion, gold, correct, extracted, formatted):
    g = grade(bench, completion, gold)
    assert g == Grade(correct, extracted, formatted)
    assert bool(g) is correct
    if ";" not in gold and grading.to_number(gold) is not None:  # one numeric gold: extracted == extract_answer
        assert extract_answer(completion) == extracted


# (completion, gold, correct)
MATH_CASES = [
    ("\\boxed{\\frac{14}{3}}", "\\frac{14}{3}", True),
    ("#### 3", "\\frac{14}{3}", False),
    ("#### \\frac{14}{3}", "\\frac{14}{3}", True),
    ("#### 11\\sqrt{2}", "11\\sqrt2", True),  # gold wrapped in $...$ parses as 11*sqrt(2)
    ("#### 11", "11\\sqrt2", False),
    ("#### 0.5", "\\frac12", True),
    ("#### 1/2", "\\frac12", True),
    ("The answer is \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("\\boxed{[1,2)}", "[1,2)", True),  # interval
    ("\\boxed{(1,2)}", "[1,2)", False),
    ("#### [1, 2)", "[1,2)", True),
    ("#### (-\\infty, 3]", "(-\\infty,3]", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),  # tuple
    ("#### (3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("#### (3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("#### x^2+2x", "x^2 + 2x", True),
    ("#### $18.90", "\\$18.90", True),
    ("#### 1,080", "1080", True),
    ("#### **73**", "73", True),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    ("#### \\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("#### 90", "90^\\circ", True),
    ("So the answer is 5.", "5", True),
    # trailing sentence punctuation / emphasis is stripped, brackets that belong to the answer are not
    ("#### (1, 2].", "(1,2]", True),
    ("#### [1, 2),", "[1,2)", True),
    ("#### [1, 2).", "(1,2]", False),
    ("#### (3, 4).", "(3,4)", True),
    ("#### **(3, 4)**!", "(3,4)", True),
    ("The answer is (3, 4).", "(3,4)", True),
    ("#### (3, 4).", "(3,5)", False),
    ("#### $\\frac{3}{4}$.", "\\frac34", True),
    ("#### $\\frac{3}{4}.$", "\\frac34", True),
    ("#### $18.90.", "\\$18.90", True),
    ("#### 1,080.", "1080", True),
    ("#### 3.5.", "3.5", True),
    ("#### 3.5.", "35", False),
    ("#### 52_8.", "52_8", True),  # a base subscript is not '_' emphasis
    ("#### \\sqrt{2}\\,.", "\\sqrt2", True),  # a LaTeX thin space before the full stop
    ("The answer is $\\sqrt{2}$.", "\\sqrt{2}", True),
    ("**Answer:** 7.", "7", True),
    ("**Answer: 7**", "8", False),
    ("We get 7. The answer is 8. Thanks!", "8", True),
    # prose after "answer is" is left to Math-Verify's reading of the whole completion, as before
    ("The answer is 5, which is odd.", "5", True),
    ("To answer this: we compute.\nSo x = 5.", "5", True),
    ("So the answer is 12 apples.", "12", True),
    ("no idea", "5", False),
    ("", "5", False),
]


@pytest.mark.parametrize("completion,gold,correct", MATH_CASES)
def test_adversarial_math(completion, gold, correct):
    assert grade_math(completion, gold).correct is correct
    assert grade("math500", completion, gold).correct is correct


# --------------------------------------------------------------------------------------------------- sentence endings
# A final answer followed by sentence punctuation, with or without markdown emphasis, on a '####' line or in a plain
# closing sentence, grades like the bare answer; its wrong-value twin still grades wrong.
# --------------------------------------------------------------------------------------------------- property: an answer
# ending a sentence. Every number form docs/data-and-grading.md lists x every trailing mark x every benchmark x every sentence shape: the
# grade of "...X<mark>" equals that of "...X", and the extracted answer is the same (nothing of X dropped). A new form
# or mark is one line here.
# (right answer, wrong twin, numeric gold, MATH-500 gold)
FORMS = [
    ("42", "43", "42", "42"),
    ("1,080", "1,081", "1080", "1080"),
    ("$18", "$19", "18", "18"),
    ("\\$18", "\\$19", "18", "18"),
    ("-7", "-8", "-7", "-7"),
    ("3.5", "3.6", "3.5", "3.5"),
    ("13/6", "13/7", "13/6", "\\frac{13}{6}"),
    ("\\frac{13}{6}", "\\frac{13}{7}", "13/6", "\\frac{13}{6}"),
    ("\\dfrac{13}{6}", "\\dfrac{13}{7}", "13/6", "\\frac{13}{6}"),
    ("\\boxed{42}", "\\boxed{43}", "42", "42"),
    ("\\boxed{\\dfrac{13}{6}}", "\\boxed{\\dfrac{13}{7}}", "13/6", "\\frac{13}{6}"),
    ("**42**", "**43**", "42", "42"),
    ("*42*", "*43*", "42", "42"),
    ("__42__", "__43__", "42", "42"),
    ("_42_", "_43_", "42", "42"),
    ("**13/6**", "**13/7**", "13/6", "\\frac{13}{6}"),
]
MARKS = (".", "!", "?", ";", ":", ",", "!.", ".)", "**.", "?!", "...")
SHAPES = ("Hence the value is {}", "We add 10 and 5 to get 15.\n#### {}", "So x = {}")
BENCHES = sorted(grading.GRADED_BENCHMARKS)


def _gold(bench, form):
    return form[3] if bench == "math500" else form[2]


@pytest.mark.parametrize("bench", BENCHES)
@pytest.mark.parametrize("shape", SHAPES, ids=["is", "hash", "equals"])
@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
def test_trailing_marks_change_no_grade(bench, shape, form):
    for answer, correct in ((form[0], True), (form[1], False)):
        bare = grade(bench, shape.format(answer), _gold(bench, form))
        assert bare.correct is correct, (bench, shape.format(answer), bare)
        for mark in MARKS:
            text = shape.format(answer + mark)
            g = grade(bench, text, _gold(bench, form))
            assert (g.correct, g.extracted) == (bare.correct, bare.extracted), (bench, text, g, bare)


# A '!' inside math is a factorial; after an answer in prose it ends the sentence (docs/data-and-grading.md, "Extraction").
FACTORIALS = [("The answer is \\boxed{5!}", True), ("The answer is $5!$.", True), ("5! = 120", True),
              ("The answer is 5! = 120.", True), ("#### 5! = 120", True),
              ("The answer is 5!", False), ("#### 5!", False), ("Hence the value is 5!.", False)]


@pytest.mark.parametrize("bench", BENCHES)
@pytest.mark.parametrize("text,correct", FACTORIALS)
def test_factorial_in_math_punctuation_in_prose(bench, text, correct):
    assert grade(bench, text, "120").correct is correct, (bench, text)
    assert grade(bench, text, "5").correct is (not correct), (bench, text)


ISSUE_TABLE = ["Hence the value is 13/6.", "Hence the value is 13/6!", "Hence the value is 13/6?",
               "Hence the value is 13/6;", "Hence the value is 13/6!.", "Hence the value is 13/6.)",
               "Hence the value is **13/6**.", "Hence the value is \\dfrac{13}{6}", "So x = \\dfrac{13}{6}.",
               "So x = \\dfrac{13}{6}!", "The answer is $\\dfrac{13}{6}$.", "Hence the value is \\frac{13}{6}!"]


@pytest.mark.parametrize("text", ISSUE_TABLE)
def test_thirteen_sixths_in_every_reported_form(text):
    for bench, gold in (("math500", "\\frac{13}{6}"), ("gsm8k", "13/6")):
        g = grade(bench, text, gold)
        assert g.correct and to_number_or_latex(g.extracted) in ("13/6", "\\frac{13}{6}"), (bench, text, g)


def to_number_or_latex(extracted):
    return extracted.replace(" ", "") if extracted else extracted


def test_math_extracted_and_formatted():
    g = grade_math("Work...\n#### \\frac{14}{3}", "\\frac{14}{3}")
    assert g.correct and g.formatted and g.extracted == "\\frac{14}{3}"
    assert grade_math("nothing", "5").extracted is None


def test_grade_math_in_a_thread_does_not_raise():
    """Math-Verify's signal timeouts raise outside the main thread; grade_math turns them off there."""
    out, errors = [], []

    def run():
        try:
            out.append(grade_math("\\boxed{\\frac{14}{3}}", "\\frac{14}{3}").correct)
        except Exception as e:  # pragma: no cover - the failure being tested
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert errors == [] and out == [True]


def test_grade_many_process_pool_matches_serial():
    comps = [c for c, _, _ in MATH_CASES] * 3
    golds = [g for _, g, _ in MATH_CASES] * 3
    serial = grade_many("math500", comps, golds, workers=1)
    pooled = grade_many("math500", comps, golds, workers=2, chunksize=4)
    assert serial == pooled


def test_unknown_benchmark():
    with pytest.raises(PSPOError, match="valid: gsm8k"):
        grade("gsm8k_typo", "#### 1", "1")


def test_grade_numeric_default_strict_for_rounded_gold():
    assert not grade_numeric("#### 10/3", "3.333").correct  # rounding rule only with rounded_gold=True (asdiv)
    assert grade_numeric("#### 10/3", "3.333", rounded_gold=True).correct


# --------------------------------------------------------------------------------------------------- CLI
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_grade_end_to_end(data_dir, tmp_path, capsys):
    rows = data.load_benchmark("gsm8k", data_dir=data_dir)[:4]
    inp = tmp_path / "completions.jsonl"
    _write_jsonl(inp, [
        {"id": rows[0]["id"], "completion": rows[0]["solution"]},
        {"id": rows[1]["id"], "completion": f"#### {rows[1]['answer']}"},
        {"id": rows[2]["id"], "completion": "I don't know"},
        {"id": rows[3]["id"], "completion": [{"role": "assistant", "content": f"so \\boxed{{{rows[3]['answer']}}}"}]},
    ])
    out = tmp_path / "graded.jsonl"
    assert pspo(["grade", "gsm8k", str(inp), "--data-dir", str(data_dir), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "accuracy: 3/4 = 0.7500"
    graded = [json.loads(x) for x in out.read_text().split("\n") if x]
    assert [g["correct"] for g in graded] == [True, True, False, True]
    assert set(graded[0]) >= {"id", "completion", "extracted", "gold", "correct"}
    assert graded[1]["gold"] == rows[1]["answer"] and graded[2]["extracted"] is None


def test_cli_grade_asdiv_pal_subset_uses_pal_target(data_dir, tmp_path, capsys):
    inp = tmp_path / "c.jsonl"
    _write_jsonl(inp, [{"id": "asdiv/nluds-1295", "completion": "#### 5"}])  # gold '5; 15; 20', PAL gold '5'
    pspo(["grade", "asdiv", str(inp), "--data-dir", str(data_dir), "--subset", "pal2096"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "accuracy: 1/1 = 1.0000"
    pspo(["grade", "asdiv", str(inp), "--data-dir", str(data_dir)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "accuracy: 0/1 = 0.0000"


def test_cli_grade_unknown_id_lists_valid(data_dir, tmp_path):
    inp = tmp_path / "c.jsonl"
    _write_jsonl(inp, [{"id": "gsm8k_test/99999", "completion": "#### 1"}])
    with pytest.raises(PSPOError, match=r"gsm8k_test/99999.*gsm8k_test/0, gsm8k_test/1.*1319 ids"):
        pspo(["grade", "gsm8k", str(inp), "--data-dir", str(data_dir)])


def test_cli_grade_subprocess_errors_are_one_line(data_dir, tmp_path):
    inp = tmp_path / "c.jsonl"
    inp.write_text('{"id": "gsm8k_test/0", "completion": "#### 18"}\n{not json\n')
    r = subprocess.run([sys.executable, "-m", "pspo.cli", "grade", "gsm8k", str(inp), "--data-dir", str(data_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and f"{inp}:2: malformed JSON row" in r.stderr
    inp.write_text('{"id": "gsm8k_test/0", "completion": "#### 18"}\n')
    r = subprocess.run([sys.executable, "-m", "pspo.cli", "grade", "gsm8k", str(inp), "--data-dir", str(data_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "accuracy: 1/1 = 1.0000"
    r = subprocess.run([sys.executable, "-m", "pspo.cli", "grade", "gsm9k", str(inp), "--data-dir", str(data_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "valid: gsm8k, svamp, asdiv, math500" in r.stderr


def test_cli_grade_missing_keys(data_dir, tmp_path):
    inp = tmp_path / "c.jsonl"
    _write_jsonl(inp, [{"id": "gsm8k_test/0", "text": "#### 18"}])
    with pytest.raises(PSPOError, match="needs keys 'id' and 'completion'"):
        pspo(["grade", "gsm8k", str(inp), "--data-dir", str(data_dir)])


def _timeout_in_worker(_):
    return grading._math_timeout(5)


def test_math_timeout_on_in_main_thread_and_pool_workers_off_in_threads():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    assert grading._math_timeout(5) == 5
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(grading._math_timeout, 5).result() is None
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        assert pool.submit(_timeout_in_worker, 0).result() == 5
