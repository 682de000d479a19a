"""Data loading, subsets, the GSM8K train/val split, hub normalisers, `pspo prepare-data`, and the prompt."""

from __future__ import annotations

import json
import shutil

import pytest

from pspo import benchmarks, data, hub, prompts
from pspo.cli import run as pspo
from pspo.errors import PSPOError

EXPECTED_ROWS = {"gsm8k": 1319, "gsm8k_train": 7473, "svamp": 1000, "asdiv": 2305, "math500": 500}


@pytest.fixture(scope="module")
def train_rows(data_dir):
    return data.load_benchmark("gsm8k_train", data_dir=data_dir)


@pytest.mark.parametrize("name", list(EXPECTED_ROWS))
def test_load_local_counts_and_schema(data_dir, name):
    rows = data.load_benchmark(name, data_dir=data_dir)
    assert len(rows) == EXPECTED_ROWS[name]
    assert all(list(r)[:5] == ["id", "question", "answer", "solution", "meta"] for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_benchmarks_constant():
    assert benchmarks.PAPER_BENCHMARKS == ("gsm8k", "svamp", "asdiv", "math500")
    assert benchmarks.BENCHMARKS == benchmarks.PAPER_BENCHMARKS + ("arith",)  # + the CPU stand-in's held-out set


# --------------------------------------------------------------------------------------------------- split
def test_split_sizes_and_disjoint(train_rows):
    train, val = data.split_train_val(train_rows, seed=0)
    assert (len(train), len(val)) == (7000, 473)  # the authors had 472 (off-by-one: range(7000, len - 1))
    ids_t, ids_v = {r["id"] for r in train}, {r["id"] for r in val}
    assert not ids_t & ids_v and ids_t | ids_v == {r["id"] for r in train_rows}
    _, val472 = data.split_train_val(train_rows, seed=0, val_size=472)
    assert val472 == val[:472]


def test_split_deterministic_by_seed(train_rows):
    a = data.split_train_val(train_rows, seed=3)
    b = data.split_train_val(train_rows, seed=3)
    c = data.split_train_val(train_rows, seed=4)
    assert [r["id"] for r in a[0]] == [r["id"] for r in b[0]]
    assert [r["id"] for r in a[0]] != [r["id"] for r in c[0]]


def test_split_equals_datasets_shuffle(train_rows):
    """Same rows as the authors' `ds.shuffle(seed=seed)` then `select(range(7000))` / `select(range(7000, n-1))`."""
    from datasets import Dataset

    ds = Dataset.from_dict({"id": [r["id"] for r in train_rows]}).shuffle(seed=1)
    train, val = data.split_train_val(train_rows, seed=1, val_size=472)
    assert [r["id"] for r in train] == ds.select(range(7000))["id"]
    assert [r["id"] for r in val] == ds.select(range(7000, len(ds) - 1))["id"]


def test_split_bad_sizes(train_rows):
    with pytest.raises(PSPOError, match="train_size"):
        data.split_train_val(train_rows, seed=0, train_size=8000)
    with pytest.raises(PSPOError, match="val_size"):
        data.split_train_val(train_rows, seed=0, val_size=474)


# --------------------------------------------------------------------------------------------------- subsets
def test_asdiv_subsets(data_dir):
    rows = data.load_benchmark("asdiv", data_dir=data_dir)
    assert len(data.select_eval_rows("asdiv", rows)) == 2305
    numeric = data.select_eval_rows("asdiv", rows, subset="numeric")
    assert len(numeric) == 2084 and all(r["meta"]["single_numeric"] for r in numeric)
    pal = data.select_eval_rows("asdiv", rows, subset="pal2096")
    assert len(pal) == 2096
    assert all(r["answer"] == r["meta"]["pal_target"] for r in pal)
    changed = [r for r in pal if r["answer"] != r["meta"]["answer_original"]]
    assert len(changed) == 74 and all(r["meta"]["answer_type"] == "multi_number" for r in changed)
    by_id = {r["id"]: r for r in rows}
    assert by_id["asdiv/nluds-1295"]["answer"] == "5; 15; 20"  # the input rows are not modified


def test_svamp_300_fixed(data_dir):
    rows = data.load_benchmark("svamp", data_dir=data_dir)
    a = data.select_eval_rows("svamp", rows, subset="300")
    b = data.select_eval_rows("svamp", list(reversed(rows)), subset="300", seed=7)
    assert len(a) == 300 and {r["id"] for r in a} == {r["id"] for r in b}
    order = [r["id"] for r in rows]
    assert [r["id"] for r in a] == sorted((r["id"] for r in a), key=order.index)  # source order kept


def test_limit_deterministic_stable_order(data_dir):
    rows = data.load_benchmark("gsm8k", data_dir=data_dir)
    a = data.select_eval_rows("gsm8k", rows, limit=50, seed=0)
    b = data.select_eval_rows("gsm8k", rows, limit=50, seed=0)
    c = data.select_eval_rows("gsm8k", rows, limit=50, seed=1)
    assert [r["id"] for r in a] == [r["id"] for r in b] != [r["id"] for r in c]
    idx = [int(r["id"].split("/")[1]) for r in a]
    assert idx == sorted(idx) and len(set(idx)) == 50
    assert len(data.select_eval_rows("gsm8k", rows, limit=5000)) == 1319
    sub = data.select_eval_rows("asdiv", data.load_benchmark("asdiv", data_dir=data_dir), subset="pal2096", limit=20)
    assert len(sub) == 20 and all(r["meta"]["in_pal2096"] for r in sub)


def test_selection_errors(data_dir):
    rows = data.load_benchmark("asdiv", data_dir=data_dir)
    with pytest.raises(PSPOError, match="valid: all, numeric, pal2096"):
        data.select_eval_rows("asdiv", rows, subset="2096")
    with pytest.raises(PSPOError, match="empty selection"):
        data.select_eval_rows("asdiv", [r for r in rows if not r["meta"]["single_numeric"]], subset="numeric")
    with pytest.raises(PSPOError, match="limit must be a positive"):
        data.select_eval_rows("asdiv", rows, limit=0)
    with pytest.raises(PSPOError, match="unknown benchmark 'mawps'; valid: gsm8k, gsm8k_train, svamp"):
        data.select_eval_rows("mawps", rows)
    with pytest.raises(PSPOError, match="unknown asdiv id 'asdiv/x'.*asdiv/nluds-0001.*2305 ids"):
        data.select_ids("asdiv", rows, ["asdiv/nluds-0002", "asdiv/x"])
    assert [r["id"] for r in data.select_ids("asdiv", rows, ["asdiv/nluds-0002"])] == ["asdiv/nluds-0002"]


# --------------------------------------------------------------------------------------------------- bad input
def test_missing_file_error(tmp_path):
    (tmp_path / "svamp.jsonl").write_text("")
    with pytest.raises(PSPOError) as e:
        data.load_benchmark("gsm8k", data_dir=tmp_path)
    msg = str(e.value)
    assert "gsm8k_test.jsonl" in msg and str(tmp_path) in msg and "data.dir" in msg and "hub" in msg
    assert "\n" not in msg
    with pytest.raises(PSPOError, match="does not exist"):
        data.load_benchmark("gsm8k", data_dir=tmp_path / "nope")


def test_unknown_benchmark_and_source(data_dir):
    with pytest.raises(PSPOError, match="valid: gsm8k, gsm8k_train, svamp, asdiv, math500"):
        data.load_benchmark("gsm9k", data_dir=data_dir)
    with pytest.raises(PSPOError, match="valid: local, hub"):
        data.load_benchmark("gsm8k", source="s3", data_dir=data_dir)


def test_malformed_and_incomplete_rows(data_dir, tmp_path):
    lines = (data_dir / "svamp.jsonl").read_text().splitlines()[:5]
    (tmp_path / "svamp.jsonl").write_text("\n".join(lines[:3] + ["{oops"] + lines[3:]) + "\n")
    with pytest.raises(PSPOError, match=r"svamp.jsonl:4: malformed JSON row"):
        data.load_benchmark("svamp", data_dir=tmp_path)
    row = json.loads(lines[0])
    del row["answer"]
    (tmp_path / "svamp.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(PSPOError, match="row 1 lacks key\\(s\\) answer"):
        data.load_benchmark("svamp", data_dir=tmp_path)
    (tmp_path / "svamp.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(PSPOError, match="duplicate id 'svamp/chal-1'"):
        data.load_benchmark("svamp", data_dir=tmp_path)
    (tmp_path / "svamp.jsonl").write_text("\n")
    with pytest.raises(PSPOError, match="no rows"):
        data.load_benchmark("svamp", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------------- hub normalisers
def test_hub_normalisers_on_hand_made_records():
    gsm = hub.normalize_hub_records("gsm8k", [{"question": "Q?", "answer": "3 * 360 = <<3*360=1080>>1,080\n#### 1,080"}],
                                     split="test")
    assert gsm[0]["id"] == "gsm8k_test/0" and gsm[0]["answer"] == "1080" and gsm[0]["meta"]["answer_raw"] == "1,080"
    sv = hub.normalize_hub_records("svamp", [{
        "ID": "chal-777", "Body": "Jack had 8 pens", "Question": "How many are left?", "Equation": "( 8.0 - 3.0 )",
        "Answer": 5.0, "Type": "Subtraction", "question_concat": "Jack had 8 pens How many are left?"}], split="test")
    assert sv[0] | {"meta": None} == {"id": "svamp/chal-777", "question": "Jack had 8 pens How many are left?",
                                      "answer": "5", "solution": None, "meta": None}
    assert sv[0]["meta"]["hub_split"] == "test"
    asd = hub.normalize_hub_records("asdiv", [
        {"body": "Seven red apples and two green apples are in the basket.",
         "question": "How many apples are in the basket?", "solution_type": "Addition", "answer": "9 (apples)",
         "formula": "7+2=9"},
        {"body": "B", "question": "Q", "solution_type": "Sum", "answer": "5 (years old); 15 (years old)", "formula": ""},
        {"body": "B", "question": "Q", "solution_type": "Algebra-1", "answer": "-(1/3)", "formula": ""},
        {"body": "B", "question": "Q", "solution_type": "Ratio", "answer": "5:6", "formula": ""},
        {"body": "B", "question": "Q", "solution_type": "Sum", "answer": "3:30 p.m.", "formula": ""},
        {"body": "B", "question": "Q", "solution_type": "Comparison", "answer": "Mrs. Hilt", "formula": ""},
        {"body": "B", "question": "Q", "solution_type": "Division", "answer": "65.0 (dollars)", "formula": ""},
        {"body": "B", "question": "Q", "solution_type": "Division", "answer": "3.333 (minutes)", "formula": ""},
    ])
    assert [r["answer"] for r in asd] == ["9", "5; 15", "-1/3", "5:6", "3:30 p.m.", "Mrs. Hilt", "65", "3.333"]
    assert [r["meta"]["answer_type"] for r in asd] == ["number", "multi_number", "fraction", "ratio", "time", "text",
                                                        "number", "number"]
    assert asd[0]["id"] == "asdiv/nluds-0001" and asd[0]["meta"]["single_numeric"] and asd[0]["meta"]["in_pal2096"] is None
    m = hub.normalize_hub_records("math500", [{"problem": "P", "solution": "S \\boxed{3}", "answer": "3",
                                                "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"}])
    assert m[0]["id"] == "math500/test/algebra/1.json" and m[0]["meta"]["level"] == 2
    with pytest.raises(PSPOError, match="hub svamp record 0: unexpected shape"):
        hub.normalize_hub_records("svamp", [{"question": "no ID"}])


@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_train", "svamp", "asdiv", "math500"])
def test_hub_normalisers_reproduce_local_files(data_dir, name):
    """Hub-shaped records rebuilt from the local files' source fields normalise back to the same rows."""
    rows = data.load_benchmark(name, data_dir=data_dir)
    m = lambda r: r["meta"]  # noqa: E731
    make = {
        "gsm8k": lambda r: {"question": r["question"], "answer": r["solution"]},
        "gsm8k_train": lambda r: {"question": r["question"], "answer": r["solution"]},
        "svamp": lambda r: {"ID": m(r)["source_id"], "Body": m(r)["body"], "Question": m(r)["question"],
                            "Equation": m(r)["equation"], "Answer": m(r)["answer_raw"], "Type": m(r)["type"]},
        "asdiv": lambda r: {"body": m(r)["body"], "question": m(r)["question"], "answer": m(r)["answer_raw"],
                            "solution_type": m(r)["solution_type"], "formula": m(r)["formula"]},
        "math500": lambda r: {"problem": r["question"], "solution": r["solution"], "answer": r["answer"], **m(r)},
    }[name]
    normalised = hub.normalize_hub_records(name, [make(r) for r in rows])
    for h, r in zip(normalised, rows):
        assert (h["id"], h["question"], h["answer"], h["solution"]) == (r["id"], r["question"], r["answer"], r["solution"])
        if name == "asdiv":
            assert (h["meta"]["answer_type"], h["meta"]["single_numeric"]) == (m(r)["answer_type"], m(r)["single_numeric"])


def test_hub_failure_is_one_line(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(PSPOError) as e:
        data.load_benchmark("gsm8k", source="hub")
    assert "openai/gsm8k/main" in str(e.value) and "\n" not in str(e.value) and "data.dir" in str(e.value)


def test_hub_loader_uses_normaliser(monkeypatch):
    import datasets

    fake = {
        "train": [{"ID": "chal-3", "Body": "b", "Question": "q", "Equation": "", "Answer": 2.0, "Type": "t"}],
        "test": [{"ID": "chal-1", "Body": "b", "Question": "q", "Equation": "", "Answer": 1.0, "Type": "t"}],
    }
    calls = []

    def load_dataset(repo, config=None, split=None, revision=None):
        calls.append((repo, config, split))
        return fake[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    rows = data.load_benchmark("svamp", source="hub")
    assert calls == [("ChilleD/SVAMP", None, "train"), ("ChilleD/SVAMP", None, "test")]
    assert [r["id"] for r in rows] == ["svamp/chal-1", "svamp/chal-3"]  # source order restored
    with pytest.raises(PSPOError, match="pal2096 needs meta.in_pal2096"):
        asdiv = hub.normalize_hub_records("asdiv", [{"body": "b", "question": "q", "answer": "9 (apples)"}])
        data.select_eval_rows("asdiv", asdiv, subset="pal2096")


# --------------------------------------------------------------------------------------------------- prepare-data CLI
def test_prepare_data_cli(data_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert pspo(["prepare-data", "--out-dir", str(out), "--data-dir", str(data_dir), "--seed", "2", "--asdiv-subset",
                 "pal2096", "--svamp-subset", "300", "--limit", "40", "--benchmarks", "gsm8k,svamp,asdiv,math500"]) == 0
    read = lambda p: [json.loads(x) for x in p.read_text().split("\n") if x]  # noqa: E731 (not splitlines: U+2028 in text)
    train, val = read(out / "train.jsonl"), read(out / "val.jsonl")
    assert (len(train), len(val)) == (7000, 473)
    assert [r["id"] for r in train] == [r["id"] for r in data.split_train_val(
        data.load_benchmark("gsm8k_train", data_dir=data_dir), seed=2)[0]]
    meta = json.loads((out / "train.meta.json").read_text())
    assert meta["seed"] == 2 and meta["rows"] == 7000 and meta["source"] == "local"
    assert meta["input_sha256"] == "5fc3087d9584af536957b07c225fac9f07be8a91fc0b301b64d7bcea1eb7f851"
    for b in benchmarks.PAPER_BENCHMARKS:  # the CLI's default: the paper's four
        assert len(read(out / f"{b}.jsonl")) == 40
    assert not (out / "arith.jsonl").exists()
    am = json.loads((out / "asdiv.meta.json").read_text())
    assert (am["subset"], am["limit"], am["limit_seed"], am["input_rows"]) == ("pal2096", 40, 0, 2305)
    assert am["ids_sha256"] and am["provenance"]["data_sha256"] == {"asdiv.jsonl": am["input_sha256"]}
    assert am["input_sha256"] == "fc2f977d8aa91717016dbe51c27c06c19b33d6bb46eaf0398b81781e21a24b38"
    assert not list(out.glob(".*tmp*"))


def test_prepare_data_missing_file(data_dir, tmp_path):
    partial = tmp_path / "d"
    partial.mkdir()
    shutil.copy(data_dir / "gsm8k_train.jsonl", partial)
    with pytest.raises(PSPOError, match="svamp.jsonl not found in .*data.dir"):
        pspo(["prepare-data", "--out-dir", str(tmp_path / "o"), "--data-dir", str(partial), "--benchmarks", "svamp"])
    with pytest.raises(PSPOError, match="unknown benchmark 'svmap'; valid: gsm8k, svamp, asdiv, math500"):
        pspo(["prepare-data", "--out-dir", str(tmp_path / "o"), "--data-dir", str(partial), "--benchmarks", "svmap"])


# --------------------------------------------------------------------------------------------------- prompts
def test_system_prompt_is_the_papers():
    assert prompts.SYSTEM_PROMPT == (
        "You are a careful math solver. Think through the solution and show the steps. Use English only. "
        "End the response with the final answer only in the format: '#### <final numeric answer only>'"
    )
    assert prompts.build_messages("What is 2+2?") == [
        {"role": "system", "content": prompts.SYSTEM_PROMPT}, {"role": "user", "content": "What is 2+2?"}]
    assert prompts.build_messages("Q", system_prompt="Be brief.")[0]["content"] == "Be brief."
    assert prompts.build_messages("Q", system_prompt="") == [{"role": "user", "content": "Q"}]


def test_render_with_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    q = "Natalia sold clips to 48 of her friends. How many?"
    text = prompts.render_prompt(tok, q)
    assert prompts.SYSTEM_PROMPT in text and q in text
    assert text.index(prompts.SYSTEM_PROMPT) < text.index(q)
    assert text.rstrip().endswith("assistant")  # add_generation_prompt: ends with the assistant header
    other = prompts.render_prompt(tok, q, system_prompt="Solve it.")
    assert "Solve it." in other and prompts.SYSTEM_PROMPT not in other


def test_render_fallback_without_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.chat_template = None
    text = prompts.render_prompt(tok, "What is 2+2?")
    assert text == f"System: {prompts.SYSTEM_PROMPT}\n\nUser: What is 2+2?\n\nAssistant:"

    class Bare:  # no chat_template attribute at all
        pass

    assert prompts.render_prompt(Bare(), "Q", system_prompt="") == "User: Q\n\nAssistant:"
