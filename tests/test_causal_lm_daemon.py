"""causal_lm through the daemon: chat and prompt/completion rows checked with readable reasons in the
inbox, then one real update (the first model judged against the base model), `registry/champion`
loaded with AutoModelForCausalLM and generating without peft, `eval --json` and `predict --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.ingest.chat import ChatValidator
from daemon.ingest.rows import LabelSet
from tests.conftest import cli, error_doc, jsonl, quarantined, write_config
from tests.test_causal_lm import KEYS, VALUES, tiny_causal_lm


def reasons(record: object) -> list[tuple[str | None, str]]:
    found = ChatValidator(LabelSet(), 0.1)(7, record)  # type: ignore[arg-type]
    return [] if isinstance(found, tuple) else [(error.field, error.reason) for error in found]


def test_chat_and_prompt_rows_are_checked_with_a_reason_for_each_fault() -> None:
    assert reasons({"prompt": "Capital of France?", "completion": "Paris", "id": "q1"}) == []
    good = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Capital of France?"},
                         {"role": "assistant", "content": "Paris"}], "split": "eval"}
    row = ChatValidator(LabelSet(), 0.1)(1, good)
    assert row == (1, good["messages"][:-1], "Paris", None, None)  # eval; the conversation, then the answer
    assert ChatValidator(LabelSet(), 0.1)(1, {"prompt": "Q", "completion": "A"})[1:3] == (  # type: ignore[index]
        [{"role": "user", "content": "Q"}], "A")
    user = {"role": "user", "content": "Hi"}
    assert reasons({"prompt": "Q"}) == [("completion", "missing_field")]
    assert reasons({"prompt": 3, "completion": " "}) == [("prompt", "not_string"), ("completion", "empty_text")]
    assert reasons({"messages": "Hi"}) == [("messages", "not_message_list")]
    assert reasons({"messages": []}) == [("messages", "not_message_list")]
    assert reasons({"messages": [user, {"role": "bot", "content": "x"}]}) == [("messages[1].role", "bad_role")]
    assert reasons({"messages": [user, {"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}) == [
        ("messages[1].role", "bad_role")]
    assert reasons({"messages": [user, {"role": "assistant", "content": ""}]}) == [("messages[1].content", "empty_content")]
    assert reasons({"messages": [user, {"role": "assistant", "content": 5}]}) == [("messages[1].content", "not_string")]
    assert reasons({"messages": [user, {"role": "assistant"}]}) == [("messages[1]", "bad_message")]
    assert reasons({"messages": [{"role": "assistant", "content": "x"}, user]}) == [("messages[1].role", "last_not_assistant")]
    assert reasons({"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}) == [
        ("messages", "no_user_message")]
    assert reasons({"messages": [user, {"role": "assistant", "content": "y"}], "prompt": "Q"}) == [
        ("messages", "mixed_forms")]
    assert reasons({"prompt": "Q", "completion": "A", "split": "test"}) == [("split", "bad_split")]
    long = ChatValidator(LabelSet(), 0.1, max_text_chars=10)(3, {"prompt": "12345", "completion": "123456"})
    assert [(e.field, e.reason) for e in long] == [("prompt", "text_too_long")]  # type: ignore[union-attr]


def test_the_inbox_takes_jsonl_chat_files_and_quarantines_bad_ones_naming_the_row(home_root: Path) -> None:
    write_config(home_root, model={"task": "causal_lm"})
    inbox = home_root / "inbox"
    (inbox / "good.jsonl").write_text(jsonl([{"prompt": "Q1", "completion": "A1"},
                                             {"messages": [{"role": "user", "content": "Q2"},
                                                           {"role": "assistant", "content": "A2"}]}]))
    (inbox / "bad.jsonl").write_text(jsonl([{"prompt": "Q1", "completion": "A1"},
                                            {"messages": [{"role": "user", "content": "Q2"}]}]))
    (inbox / "table.csv").write_text("prompt,completion\nQ,A\n")
    assert cli("ingest", "--once", "--home", str(home_root)).exit_code == 0
    assert quarantined(home_root) == ["bad.jsonl", "table.csv"]
    bad = error_doc(home_root, "bad.jsonl")
    assert bad["reason"] == "invalid_rows" and bad["errors"] == [
        {"line": 2, "field": "messages[0].role", "reason": "last_not_assistant",
         "value": "the last message is the answer to learn: the assistant's"}]
    assert error_doc(home_root, "table.csv")["reason"] == "unsupported_format"
    status = json.loads(cli("status", "--home", str(home_root), "--json").stdout)
    assert sum(status["pending_rows"].values()) == 2 and status["labels"] == []


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("chat") / "model")


def test_an_update_on_a_causal_lm_home_serves_a_model_that_generates(home_root: Path, chat_model: Path,
                                                                     tmp_path: Path) -> None:
    write_config(home_root, model={"task": "causal_lm", "base": str(chat_model), "max_length": 64},
                 strategy={"name": "finetune", "epochs": 3, "lr": 1e-2, "min_steps": 0, "batch_size": 8})
    rows = [{"prompt": f"What colour is the {key}?", "completion": VALUES[i % len(VALUES)],
             "split": "eval" if i % 4 == 0 else "train"} for i, key in enumerate(KEYS)]
    (home_root / "inbox" / "facts.jsonl").write_text(jsonl(rows))
    result = cli("update", "--home", str(home_root), "--now", "--wait", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("show", "v0001", "--home", str(home_root), "--json").stdout)
    assert shown["decision"] == "promoted", shown["gate"]
    assert any(reason.startswith("first model: answer_loss on batch 1") and "(base model)" in reason
               for reason in shown["gate"]["reasons"]), shown["gate"]
    assert shown["metrics"]["candidate"]["new"] < shown["metrics"]["champion"]["new"]  # the base's loss, then ours
    beside = shown["metrics"]["candidate"]["figures"]["1"]  # exact match and the stop check beside the loss
    assert set(beside) >= {"answer_loss", "exact_match", "perplexity", "generated", "stopped"}, beside

    from transformers import AutoModelForCausalLM, AutoTokenizer

    champion = home_root / "registry" / "champion"
    model = AutoModelForCausalLM.from_pretrained(champion)
    tokenizer = AutoTokenizer.from_pretrained(champion)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is the apple?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]

    data = tmp_path / "test.jsonl"
    data.write_text(jsonl([{"messages": [{"role": "user", "content": "What colour is the apple?"},
                                         {"role": "assistant", "content": "red"}]},
                           {"prompt": "What colour is the river?", "completion": "blue"}, {"prompt": ""}]))
    result = cli("eval", "--home", str(home_root), "--data", str(data), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) >= {"version", "rows", "answer_loss", "perplexity", "exact_match"} and doc["rows"] == 2, doc
    assert doc["version"] == "v0001" and doc["answer_loss"] > 0 and doc["invalid_rows"] == 1
    assert abs(doc["perplexity"] - 2.718281828 ** doc["answer_loss"]) < 1e-6 * doc["perplexity"]
    assert "answer loss" in cli("eval", "--home", str(home_root), "--data", str(data)).stdout
    result = cli("predict", "--home", str(home_root), "--json", "--max-new-tokens", "3", "What colour is the apple?")
    assert result.exit_code == 0, result.output
    [item] = json.loads(result.stdout)
    assert item["prompt"] == "What colour is the apple?" and isinstance(item["completion"], str)
    assert len(tokenizer(item["completion"], add_special_tokens=False)["input_ids"]) <= 3


@pytest.mark.slow
def test_a_lora_update_stores_an_adapter_only_and_serves_the_merged_model(home_root: Path, chat_model: Path,
                                                                          tmp_path: Path) -> None:
    write_config(home_root, model={"task": "causal_lm", "base": str(chat_model), "max_length": 64},
                 strategy={"name": "finetune", "epochs": 2, "lr": 1e-2, "min_steps": 0, "batch_size": 8})
    first = [{"prompt": f"Colour of the {key}?", "completion": VALUES[i % len(VALUES)],
              "split": "eval" if i % 4 == 0 else "train"} for i, key in enumerate(KEYS[:8])]
    (home_root / "inbox" / "first.jsonl").write_text(jsonl(first))
    assert cli("update", "--home", str(home_root), "--now", "--wait").exit_code == 0
    # the task's own strategy (lora+lwf+replay) and min_steps (0)
    write_config(home_root, strategy={"name": "", "epochs": 2, "lr": 1e-2, "batch_size": 8})
    second = [{"messages": [{"role": "user", "content": f"Colour of the {key}?"},
                            {"role": "assistant", "content": VALUES[(i + 3) % len(VALUES)]}],
               "split": "eval" if i % 4 == 0 else "train"} for i, key in enumerate(KEYS[8:])]
    (home_root / "inbox" / "second.jsonl").write_text(jsonl(second))
    assert cli("update", "--home", str(home_root), "--now", "--wait").exit_code == 0
    shown = json.loads(cli("show", "v0002", "--home", str(home_root), "--json").stdout)
    assert shown["strategy"] == "lora+lwf+replay" and shown["decision"] in ("promoted", "rejected"), shown
    version = home_root / "registry" / "versions" / "v0002"
    assert (version / "adapter").is_dir() and not (version / "model").exists()
    from safetensors.torch import load_file

    adapter = load_file(str(version / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)  # no full matrix: no head, no embeddings
    data = tmp_path / "test.jsonl"
    data.write_text(jsonl(second))
    result = cli("eval", "--home", str(home_root), "--data", str(data), "--version", "v0002", "--json")
    assert result.exit_code == 0, result.output  # the merged weights, materialised for serving
    assert json.loads(result.stdout)["rows"] == len(second)
    exported = tmp_path / "export"
    assert cli("export", "v0002", str(exported), "--home", str(home_root)).exit_code == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
