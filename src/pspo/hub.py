"""The public hub datasets, loaded with ``datasets.load_dataset`` and normalised to the shared row schema.

Which repo, config and splits each benchmark comes from is ``pspo.benchmarks``' ``hub``; the normalisers are pure
functions (unit-tested on hand-made records), so only :func:`load_hub` needs the network.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from pspo.benchmarks import REGISTRY, canonical
from pspo.errors import PSPOError


def load_hub(name: str, *, revision: str | None = None) -> list[dict]:
    """Load the public hub dataset for ``name`` with ``datasets.load_dataset`` and normalise it (needs internet)."""
    name = canonical(name)
    repo, config, splits = REGISTRY[name].hub
    try:
        from datasets import load_dataset

        loaded = {s: load_dataset(repo, config, split=s, revision=revision) for s in splits}
    except Exception as e:  # network, auth, renamed dataset: one line with the fix
        raise PSPOError(
            f"could not load {repo}{'/' + config if config else ''} from the hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); check the network, or use source local with `data.dir`"
        ) from None
    rows: list[dict] = []
    for split in splits:
        rows += normalize_hub_records(name, list(loaded[split]), split=split)
    if name == "svamp":  # ChilleD's train/test are shuffled; restore the source order chal-1 .. chal-1000
        rows.sort(key=lambda r: _svamp_key(r["id"]))
    return rows


def _svamp_key(row_id: str) -> tuple:
    m = re.search(r"(\d+)$", row_id)
    return (0, int(m.group(1))) if m else (1, row_id)


# ---------------------------------------------------------------------------------------------- hub normalisers
def _num_str(x: Any) -> str:
    """A numeric value in integer form if integral (51.0 -> "51"), else its shortest decimal form."""
    if isinstance(x, str):
        x = float(x.replace(",", ""))
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


_NUMERIC_RE = re.compile(r"^-?\d+(?:\.\d+)?$")
_UNIT_RE = re.compile(r"^(.*?)\s*\((.*)\)\s*$")
_FRACTION_RE = re.compile(r"^(-)?\s*\(?\s*(-?\d+)\s*/\s*(\d+)\s*\)?$")


def normalize_asdiv_answer(raw: str, solution_type: str | None = None) -> dict:
    """ASDiv's answer string (``9 (apples)``) -> answer, answer_type, answer_unit, answer_value, single_numeric."""
    parts = [p.strip() for p in raw.split(";")] if ";" in raw else [raw.strip()]
    values, units = [], []
    for part in parts:
        m = _UNIT_RE.match(part)
        value, unit = (m.group(1).strip(), m.group(2).strip()) if m else (part, None)
        if not _NUMERIC_RE.match(value):
            values = None
            break
        values.append(_num_str(float(value)) if "." in value else str(int(value)))
        units.append(unit)
    if values is not None and len(values) > 1:
        return {"answer": "; ".join(values), "answer_type": "multi_number", "answer_unit": units, "answer_value": None}
    if values is not None:
        return {"answer": values[0], "answer_type": "number", "answer_unit": units[0], "answer_value": float(values[0])}
    f = _FRACTION_RE.match(raw.strip())
    if f:
        sign = "-" if (f.group(1) or "").strip() or f.group(2).startswith("-") else ""
        num, den = f.group(2).lstrip("-"), f.group(3)
        return {"answer": f"{sign}{num}/{den}", "answer_type": "fraction", "answer_unit": None,
                "answer_value": (-1 if sign else 1) * int(num) / int(den)}
    if ":" in raw and (solution_type or "").lower() == "ratio":
        kind = "ratio"
    elif re.match(r"^\d{1,2}:\d{2}", raw.strip()):
        kind = "time"
    else:
        kind = "text"
    return {"answer": raw.strip(), "answer_type": kind, "answer_unit": None, "answer_value": None}


def normalize_hub_records(name: str, records: Iterable[dict], *, split: str | None = None) -> list[dict]:
    """Hub rows of one split -> the shared schema. Pure function (unit-tested on hand-made records).

    * openai/gsm8k (main): {question, answer="...#### 72"} -> id gsm8k_<split>/<index>, answer after ``####``
      without commas, solution = the hub ``answer``.
    * ChilleD/SVAMP: {ID, Body, Question, Equation, Answer, Type, question_concat} -> id svamp/<ID>,
      question = Body.strip() + " " + Question.strip(); ``meta.hub_split`` records train/test.
    * EleutherAI/asdiv: {body, question, solution_type, answer="9 (apples)", formula} -> id
      asdiv/nluds-<index+1:04d> (the hub rows follow ASDiv.xml order); PAL-2096 flags are unknown (None).
    * HuggingFaceH4/MATH-500: {problem, solution, answer, subject, level, unique_id} -> id math500/<unique_id>.
    """
    name = canonical(name)
    out = []
    for i, rec in enumerate(records):
        try:
            out.append(_normalize_one(name, i, rec, split))
        except (KeyError, ValueError, TypeError) as e:
            raise PSPOError(
                f"hub {name} record {i}: unexpected shape ({type(e).__name__}: {e}); keys: {sorted(rec)}"
            ) from None
    return out


def _normalize_one(name: str, i: int, rec: dict, split: str | None) -> dict:
    if name in ("gsm8k", "gsm8k_train"):
        split = split or ("train" if name == "gsm8k_train" else "test")
        raw = rec["answer"].split("####")[-1].strip()
        if "####" not in rec["answer"]:
            raise ValueError("no '####' in answer")
        return {"id": f"gsm8k_{split}/{i}", "question": rec["question"], "answer": raw.replace(",", ""),
                "solution": rec["answer"], "meta": {"split": split, "index": i, "answer_raw": raw}}
    if name == "svamp":
        body, question = rec["Body"], rec["Question"]
        answer_raw = float(rec["Answer"])
        return {
            "id": f"svamp/{rec['ID']}", "question": body.strip() + " " + question.strip(),
            "answer": _num_str(answer_raw), "solution": None,
            "meta": {"source_id": rec["ID"], "body": body, "question": question, "equation": rec.get("Equation"),
                     "answer_raw": answer_raw, "type": rec.get("Type"), "hub_split": split},
        }
    if name == "asdiv":
        body, question = rec["body"], rec["question"]
        norm = normalize_asdiv_answer(rec["answer"], rec.get("solution_type"))
        source_id = f"nluds-{i + 1:04d}"
        return {
            "id": f"asdiv/{source_id}", "question": body.strip() + " " + question.strip(),
            "answer": norm["answer"], "solution": None,
            "meta": {"source_id": source_id, "body": body, "question": question,
                     "solution_type": rec.get("solution_type"), "formula": rec.get("formula"),
                     "answer_raw": rec["answer"], **{k: v for k, v in norm.items() if k != "answer"},
                     "single_numeric": norm["answer_type"] == "number", "in_pal2096": None, "pal_target": None,
                     "hub_split": split},
        }
    if name == "math500":
        return {"id": f"math500/{rec['unique_id']}", "question": rec["problem"], "answer": rec["answer"],
                "solution": rec["solution"],
                "meta": {"subject": rec.get("subject"), "level": rec.get("level"), "unique_id": rec["unique_id"]}}
    raise ValueError(f"no normaliser for {name}")


__all__ = ["load_hub", "normalize_hub_records", "normalize_asdiv_answer"]
