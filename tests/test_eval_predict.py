"""`lifelong eval` and `lifelong predict` through the real CLI, a real registered version and the real
child process; their figures checked against the predictions they give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from registry.registry import Registry
from tests.conftest import ROOT, cli, spawn, stage_full
from tests.test_service import daemon  # noqa: F401 - the fixture

WORDS = "good bad great awful fine poor nice ugly happy sad calm loud".split()
ROWS = [{"text": f"a {word} day number {i}", "label": ("pos", "neg")[i % 2]} for i, word in enumerate(WORDS * 2)]
UNKNOWN = [{"text": "a grey day", "label": "meh"}, {"text": "a grey night", "label": "meh"}]
INVALID = {"text": "   ", "label": "pos"}


@pytest.fixture(scope="module")
def split_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny random model with its head stretched along the direction in which ROWS' texts differ,
    so that it gives both labels (a random tiny BERT's pooled output barely depends on the text)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model.eval()
    with torch.no_grad():
        texts = [row["text"] for row in ROWS + UNKNOWN]
        pooled = model.bert(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
        mean = pooled.mean(0)
        direction = pooled[0] - mean
        scale = 3.0 / float(((pooled - mean) @ direction).std())
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[1] = scale * direction
        model.classifier.bias[1] = -scale * float(mean @ direction)
    out = tmp_path_factory.mktemp("split") / "model"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def register(home_root: Path, model: Path, *, promote: bool = True) -> str:
    with Registry(home_root / "registry") as registry:
        record = registry.create_version(stage_full(registry, model), parent=None, strategy="finetune")
        if promote:
            registry.promote(record.version, actor="cli", reason="test")
    return record.version


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ok_json(*args: str) -> object:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def expected_figures(rows: list[dict], predicted: list[str]) -> dict:
    """accuracy, macro F1 and per-label figures computed here from the predictions."""
    labels = sorted({row["label"] for row in rows} | set(predicted))
    per_label = {}
    for label in labels:
        tp = sum(1 for row, p in zip(rows, predicted) if row["label"] == label == p)
        fp = sum(1 for row, p in zip(rows, predicted) if p == label != row["label"])
        support = sum(1 for row in rows if row["label"] == label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    accuracy = sum(row["label"] == p for row, p in zip(rows, predicted)) / len(rows)
    return {"rows": len(rows), "accuracy": accuracy, "per_label": per_label,
            "macro_f1": sum(v["f1"] for v in per_label.values()) / len(per_label)}


def test_eval_on_jsonl_csv_and_parquet_agrees_with_predict(home_root: Path, split_model: Path, tmp_path: Path) -> None:
    register(home_root, split_model)
    scored = ROWS + UNKNOWN
    home = ["--home", str(home_root)]
    predictions = ok_json("predict", *home, *[row["text"] for row in scored])
    assert [p["text"] for p in predictions] == [row["text"] for row in scored]
    assert all(set(p) == {"text", "label", "score"} and 0.5 <= p["score"] <= 1.0 for p in predictions)
    predicted = [p["label"] for p in predictions]
    assert {"pos", "neg"} <= set(predicted), "the test model should give both labels"
    expected = expected_figures(scored, predicted)

    data = scored[:5] + [INVALID] + scored[5:]  # one invalid row, on line 6
    files = [write_jsonl(tmp_path / "data.jsonl", data), tmp_path / "data.csv", tmp_path / "data.parquet"]
    files[1].write_text("text,label\n" + "".join(f"{row['text']},{row['label']}\n" for row in data))
    pq.write_table(pa.table({"text": [row["text"] for row in data], "label": [row["label"] for row in data]}), files[2])
    docs = [ok_json("eval", *home, "--data", str(path)) for path in files]
    for doc, line in zip(docs, (6, 7, 6)):  # a CSV file's line 1 is its header
        assert {"version", "rows", "accuracy", "macro_f1", "per_label"} <= set(doc)
        assert doc["version"] == "v0001"
        assert (doc["rows"], doc["accuracy"]) == (expected["rows"], pytest.approx(expected["accuracy"]))
        assert doc["macro_f1"] == pytest.approx(expected["macro_f1"])
        assert set(doc["per_label"]) == set(expected["per_label"])
        for label, figures in expected["per_label"].items():
            assert doc["per_label"][label] == pytest.approx(figures), label
        assert doc["per_label"]["meh"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
        assert doc["unknown_labels"] == {"meh": 2}
        assert doc["invalid_rows"] == 1
        assert doc["errors"] == [{"line": line, "field": "text", "reason": "empty_text", "value": "   "}]
    same = ("version", "rows", "accuracy", "macro_f1", "per_label", "unknown_labels")
    from daemon.update.inference import SequenceClassification  # the text output, from the same document

    text = SequenceClassification.render_eval(docs[0]).splitlines()
    assert text[:3] == [f"v0001 on {files[0]}: {len(scored)} rows", f"accuracy  {expected['accuracy']:.4f}",
                        f"macro F1  {expected['macro_f1']:.4f}"]
    assert [line.split()[0] for line in text[5:8]] == list(docs[0]["per_label"])
    assert "meh (2)" in text[8] and text[9].startswith("1 invalid rows not scored; first: line 6, text: empty_text")
    assert [{key: doc[key] for key in same} for doc in docs[1:]] == [{key: docs[0][key] for key in same}] * 2


def test_predict_on_arguments_and_on_a_file(home_root: Path, split_model: Path, tmp_path: Path) -> None:
    register(home_root, split_model)
    home = ["--home", str(home_root)]
    texts = [ROWS[0]["text"], ROWS[1]["text"], "tab\there \u202e and a line\nbreak " + "x" * 80]
    shown = cli("predict", *home, "--version", "v0001", *texts)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["label", "score", "text"] and len(lines) == 4
    assert lines[3].count("\\x09") == 1 and "\\u202e" in lines[3] and "\\x0a" in lines[3] and lines[3].endswith("…")
    assert "\t" not in shown.stdout and "\u202e" not in shown.stdout

    plain = tmp_path / "texts.txt"
    plain.write_text(f"{texts[0]}\n\n{texts[1]}\r\n")
    lines_file = tmp_path / "texts.jsonl"
    write_jsonl(lines_file, [{"text": texts[2], "label": "ignored"}])
    from_file = ok_json("predict", *home, "--file", str(plain))
    assert [p["text"] for p in from_file] == texts[:2]
    table = [line.split()[:2] for line in lines[1:3]]  # the same texts' label and score, as shown
    assert [(p["label"], round(p["score"], 4)) for p in from_file] == [(label, float(score)) for label, score in table]
    from daemon.update.inference import read_texts  # the .jsonl form of --file, without a second model run
    from tests.conftest import open_home

    assert read_texts(open_home(home_root), lines_file) == texts[2:]


def test_exit_codes(home_root: Path, split_model: Path, tmp_path: Path) -> None:
    home = ["--home", str(home_root)]
    data = write_jsonl(tmp_path / "data.jsonl", ROWS)
    result = cli("predict", *home, "hello")
    assert result.exit_code == 4 and "there is no champion yet" in result.stderr
    register(home_root, split_model)
    for _ in range(2):  # v0002 and v0003; retention keeps the champion and the newest
        register(home_root, split_model, promote=False)
    with Registry(home_root / "registry") as registry:
        assert registry.gc(1).pruned == ["v0002"]
    for args in (["eval", "--data", str(data), "--version", "v0042"], ["predict", "--version", "v0042", "hi"]):
        result = cli(*args, *home)
        assert result.exit_code == 4 and "no such version: v0042" in result.stderr, result.output
    for args in (["eval", "--data", str(data), "--version", "v0002"], ["predict", "--version", "v0002", "hi"]):
        result = cli(*args, *home)
        assert result.exit_code == 4 and "pruned" in result.stderr, result.output
    (tmp_path / "data.txt").write_text("text,label\n")
    write_jsonl(tmp_path / "blank.jsonl", [INVALID])
    for args in (["predict"], ["predict", "hi", "--file", str(data)], ["predict", " "],
                 ["eval", "--data", str(tmp_path / "data.txt")], ["eval", "--data", str(tmp_path / "blank.jsonl")],
                 ["eval", "--data", str(tmp_path / "missing.csv")]):
        result = cli(*args, *home)
        assert result.exit_code == 2, (args, result.output)


@pytest.mark.slow  # ~20-30 s on 2 cores: in `make test-slow` (make test's 15-minute budget)
def test_eval_and_predict_work_while_the_daemon_runs(home_root: Path, split_model: Path, tmp_path: Path,
                                                      daemon) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.tiny import tiny_lora_version

    register(home_root, split_model)
    with Registry(home_root / "registry") as registry:  # v0002: an adapter, merged on first use
        staging = tiny_lora_version(registry.new_staging(), split_model, ["neg", "pos", "meh"])
        registry.create_version(staging, parent="v0001", strategy="lora")
    daemon()
    data = write_jsonl(tmp_path / "data.jsonl", ROWS)
    proc = spawn("eval", "--home", str(home_root), "--data", str(data), "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["rows"] == len(ROWS)
    shown = cli("predict", "--home", str(home_root), "--version", "v0002", "--json", "a good day")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)[0]["label"] in ("neg", "pos", "meh")
    assert (home_root / "registry" / "serving" / "v0002" / "config.json").is_file()


def test_the_parent_side_imports_no_torch() -> None:
    code = ("import sys, daemon.update.inference\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
