"""The learning-quality benchmark's engine: one contender through a real daemon, read back, pruned."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quality import read_back, run_reference, run_strategy
from bench.streams import Part, write
from tests.test_learning import toy


@pytest.mark.slow  # a benchmark contender through the real daemon (make test-slow)
def test_a_contender_runs_through_the_real_daemon_and_its_home_keeps_its_records_without_weights(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [Part(name=f"toy-{n}.jsonl", group=str(n), rows=[{"text": t, "label": l} for t, l in toy(labels, 60, seed=n)])
             for n, labels in ((1, ["sport", "food"]), (2, ["music", "tech"]))]
    files = write(parts, tmp_path / "stream")
    profile = {"max_length": 32, "eval_fraction": 0.3, "epochs": 4}
    monkeypatch.setenv("LIFELONG_STRATEGY__LR", "0.003")  # the daemons inherit it: a tiny random model needs it
    run = run_strategy("replay", files, 0, profile, str(tiny_model), tmp_path / "runs")
    home = tmp_path / "runs" / "replay-seed0"
    assert run["promoted"] + run["rejected"] == 2 and run["train_samples"] > 0
    assert run["promoted"] >= 1 and len(run["matrix"]) == 2 and None not in run["matrix"][-1]  # the final champion's row
    # the figures were read, then the weights deleted: a full table's homes would hold about 20 GB
    assert not (home / "registry" / "versions").exists() and not (home / "state" / "work").exists()
    assert (tmp_path / "runs" / "replay-seed0.log").is_file()  # the daemon's log stays
    assert read_back(home, 2)["matrix"] == run["matrix"]  # and the figures can be read again


@pytest.mark.slow  # two training children (make test-slow)
def test_the_retrain_reference_learns_a_ner_stream_and_scores_each_group_on_its_own_types(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_ner import NEW, OLD, sentences

    # two groups, each labelling only its own types (the other group's entities read O), as the ner stream does
    parts = [Part(name=f"ner-{n}.jsonl", group="+".join(kinds), rows=sentences(80, OLD + NEW, kinds, seed=n))
             for n, kinds in ((1, OLD), (2, NEW))]
    profile = {"max_length": 32, "eval_fraction": 0.3, "epochs": 6, "task": "token_classification"}
    run = run_reference("retrain", parts, 0, profile, str(tiny_model), tmp_path, lr=3e-3)
    assert len(run["matrix"]) == 2 and run["matrix"][0][1] is None  # after stage 1, batch 2 is not yet scored
    final = run["matrix"][-1]
    assert all(0.0 <= score <= 1.0 for score in final)
    assert min(final) > 0.5  # entity F1 on each group's own types: the tiny model learns these toy names
    # stage 1 trains on batch 1's training rows, stage 2 on both batches': 2 x 6 epochs over 56 + 112 sentences
    assert run["train_samples"] >= 6 * (80 + 160) * 0.6


def test_the_ner_verdicts_are_the_issues_targets_on_f1() -> None:
    from bench.quality import default_for
    from bench.quality_report import table, verdicts

    default = default_for("ner")

    def row(acc: float, samples: int, forgetting: float | None = None) -> dict:
        return {"acc": acc, "bwt": None, "forgetting_max": forgetting, "candidate_drop_max": None, "train_samples": samples,
                "wall_seconds": 1.0, "promoted": None, "rejected": None}

    results = {"stream": "ner", "seeds": [0], "strategies": {default: row(0.50, 400, 0.02),
                                                             "joint": row(0.52, 300), "retrain": row(0.53, 1000)}}
    lines = verdicts(results, "full")
    assert "F1 0.500 vs joint 0.520: gap 0.020 (met, target <= 0.03)" in lines[0]
    assert "drop of an earlier group's F1 from its best 0.020 (met, target <= 0.03)" in lines[1]
    assert "40% of retrain's (met, target <= 40%)" in lines[2]
    results["strategies"][default] = row(0.45, 500, 0.08)
    assert [line.count("MISSED") for line in verdicts(results, "full")[:3]] == [1, 1, 1]
    assert table(results).startswith("| strategy | F1 | BWT |")


def test_a_merge_keeps_every_contender_of_the_earlier_run() -> None:
    from bench.quality import merged_order

    kept = {"finetune": [], "avalanche:ewc": [], "avalanche:lwf": []}
    assert merged_order(kept, {"avalanche:agem": [], "replay": []}) == [
        "finetune", "replay", "avalanche:ewc", "avalanche:lwf", "avalanche:agem"]


@pytest.mark.slow  # one training child on the tiny Llama (make test-slow)
def test_the_joint_reference_trains_a_chat_stream_and_reports_answer_loss_and_tokens(tmp_path: Path) -> None:
    from tests.test_causal_lm import FIRST, SECOND, tiny_causal_lm

    model = tiny_causal_lm(tmp_path / "model", template=False)
    # the chat stream's rows: a plain prompt and its completion (the inbox makes the prompt one user message)
    parts = [Part(name=f"chat-{n}.jsonl", group=str(n), rows=[{"prompt": r["prompt"][0]["content"], "completion": r["completion"]}
                                                              for r in rows])
             for n, rows in ((1, FIRST), (2, SECOND))]
    profile = {"max_length": 32, "eval_fraction": 0.3, "epochs": 2, "task": "causal_lm",
               "set": ["strategy.batch_size=4", "strategy.min_steps=0"]}
    run = run_reference("joint", parts, 0, profile, str(model), tmp_path / "runs")
    assert run["matrix"][0] == [None, None] and all(loss > 0 for loss in run["matrix"][-1])  # answer loss, nats
    assert set(run["final_scores"]) == {"1", "2"} and "exact_match" in run["final_scores"]["1"]
    # two epochs of batch size 4 over the training rows: every answer token and its prompt counted, no padding
    assert run["train_samples"] > 0 and run["train_tokens"] >= 3 * run["train_samples"]
    # the chat table's joint-lora: the same reference trained with LoRA, in a folder of its own
    lora = run_reference("joint", parts, 0, profile, str(model), tmp_path / "runs", strategy="lora")
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"joint-seed0", "joint-lora-seed0"}
    assert lora["train_tokens"] == run["train_tokens"]  # the same rows through the same loop
    assert lora["final_scores"]["1"]["answer_loss"] != run["final_scores"]["1"]["answer_loss"]


def test_a_signal_to_the_bench_stops_the_processes_it_started() -> None:
    import signal
    import subprocess
    import sys
    import time

    # a stand-in for a bench run: one long-lived process in RUNNING (a daemon or training child, in a
    # session of its own as they are), its pid printed, then waiting on it as drive() does
    script = ("import subprocess, sys\n"
              "from bench import quality\n"
              "quality.stop_them_on_signals()\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
              "quality.RUNNING.add(child)\n"
              "print(child.pid, flush=True)\n"
              "child.wait()\n")
    root = Path(__file__).resolve().parents[1]
    bench = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    child = int(bench.stdout.readline())  # type: ignore[union-attr]
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the bench's child outlived it"
        time.sleep(0.1)


def test_a_wait_on_a_daemon_that_exited_fails_at_once() -> None:
    import subprocess
    import sys

    from bench.quality import _wait

    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    gone.wait()
    # not the TimeoutError an hour's wait would end in
    with pytest.raises(RuntimeError, match=r"the daemon exited \(3\) while waiting for its start"):
        _wait(lambda: False, 3600, "its start", gone)


def test_the_chat_token_split_reads_the_gates_answer_loss_and_adds_up(tmp_path: Path) -> None:
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.chat_tokens import _rival, split, token_losses
    from strategies.tasks.causal_lm import CausalLM
    from tests.test_causal_lm import FIRST, tiny_causal_lm

    model_dir = tiny_causal_lm(tmp_path / "model")
    rows = [*FIRST[:5], {"prompt": [{"role": "user", "content": "tell me everything"}], "completion": "and so on " * 40}]
    found, ends = token_losses(model_dir, {1: rows}, 48)[1]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    scored = CausalLM().predict(model, tokenizer, rows, [], torch.device("cpu"), 48)
    for row, prediction in zip(found, scored):  # the same per-token losses the gate's answer loss averages
        known = [x for x in row if x is not None]
        assert len(known) == prediction["answer_tokens"]
        assert sum(known) / len(known) == pytest.approx(prediction["answer_loss"], rel=1e-5)
    assert None not in found[0] and found[-1][-1] is None  # max_length cut the last answer before its end
    # where an answer ends, the model's next-token distribution after it, as greedy generation reads it:
    # whether an end token is the likeliest, and every other token's probability (an end token's 0)
    inputs = CausalLM().encode(rows[:1], tokenizer, [], 48).collate([0])
    end = int((inputs["labels"][0] == tokenizer.eos_token_id).nonzero()[-1])
    ids = inputs["input_ids"][:, :end]  # the prompt and the answer, up to its end token
    generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                               pad_token_id=tokenizer.eos_token_id, output_scores=True, return_dict_in_generate=True)
    chosen, expected = int(generated.sequences[0, -1]), generated.scores[0][0].float().softmax(-1)
    assert float(expected[tokenizer.eos_token_id].log().neg()) == pytest.approx(found[0][-1], rel=1e-4)
    expected[tokenizer.eos_token_id] = 0.0
    assert ends[0][0] == (chosen == tokenizer.eos_token_id) and torch.allclose(ends[0][1], expected, atol=1e-7)
    assert ends[-1] is None
    # the model's configured end tokens count as well: the greedy choice made one stops there
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "eos_token_id": [tokenizer.eos_token_id, chosen]}))
    stopped, others = token_losses(model_dir, {1: rows[:1]}, 48)[1][1][0]
    assert stopped and float(others[chosen]) == 0.0 and float(others.sum()) > 0
    # two rows, one cut before its end: 3 answer tokens, the end token down 1 nat, the others up 1 in all;
    # over a vocabulary of 3 with the end token 0 (its probability 0 as token_losses gives it), token 2
    # gained most where the answer ends
    p = torch.tensor
    parts = split(([[1.0, 2.0], [3.0, None]], [(False, p([0.0, 0.7, 0.1])), None]),
                  ([[1.5, 1.0], [3.5, None]], [(False, p([0.0, 0.1, 0.6])), None]), "abc".__getitem__)
    assert parts["tokens"] == 3 and parts["ended"] == 1 and parts["end_worse"] == 0
    assert parts["end"] == pytest.approx(-1 / 3) and parts["content"] == pytest.approx(1 / 3) and parts["change"] == 0
    assert (parts["end_before"], parts["end_after"]) == (2.0, 1.0)
    assert (parts["stops_before"], parts["stops_after"]) == (0, 0)
    assert parts["rival"][0] == "c" and parts["rival"][1:] == pytest.approx((0.1, 0.6))
    parts = split(([[1.0, 2.0], [1.0, 1.0]], [(True, p([0.0, 0.1, 0.1, 0.0])), (True, p([0.0, 0.3, 0.1, 0.0]))]),
                  ([[1.0, 3.0], [1.0, 2.0]], [(True, p([0.0, 0.2, 0.1, 0.0])), (False, p([0.0, 0.3, 0.0, 0.0]))]),
                  "abcd".__getitem__)
    assert (parts["stops_before"], parts["stops_after"]) == (2, 1)
    assert parts["rival"][0] == "b" and parts["rival"][1:] == pytest.approx((0.2, 0.25))
    # no token but an end token gained: no rival
    parts = split(([[1.0]], [(True, p([0.0, 0.3, 0.2]))]), ([[0.5]], [(True, p([0.0, 0.05, 0.05]))]), "abc".__getitem__)
    assert parts["rival"] is None and (parts["stops_before"], parts["stops_after"]) == (1, 1)
    # a table cell: the token as a code span, a pipe escaped for the table
    assert _rival(("a|b", 0.1, 0.25)) == '`"a\\|b"` (0.10 -> 0.25)' and _rival(None) == "-"


def test_the_chat_table_gives_each_contenders_mean_and_every_seeds_figure() -> None:
    from bench.quality_chat import aggregate, table

    def run(seed: int, loss: float, promoted: int, rise: float | None = 0.0, em: float | None = 0.5) -> dict:
        return {"seed": seed, "loss": loss, "rise_max": rise, "trivia_em": em, "train_samples": 10 + 3 * seed,
                "train_tokens": 100 + 100 * seed, "wall_seconds": 60.0, "promoted": promoted, "rejected": 8 - promoted,
                "loss_matrix": [[loss]], "final": {}, "verdicts": []}

    both = aggregate([run(0, 2.5, 2, rise=0.1, em=None), run(1, 2.7, 4, rise=0.3, em=0.5)])
    assert both["seeds"] == [0, 1] and both["loss"] == pytest.approx(2.6)
    assert (both["train_samples"], both["train_tokens"]) == (12, 150)  # means, as whole counts (11.5 to even)
    assert both["rise_max"] == 0.3  # the largest of any seed: the target bounds every batch's rise
    assert both["trivia_em"] == 0.5  # a seed without the figure is left out of the mean
    assert both["loss_matrix"] == [[2.5]]  # the first seed's, plotted
    rendered = table({"strategies": {"lora+replay": both, "joint": aggregate([run(0, 2.4, 0)])}, "default": "lora+replay"})
    assert "| **lora+replay** (default) | 0, 1 | 2.600 (2.500 / 2.700) | 0.300 (0.100 / 0.300) | 0.50 (- / 0.50) |" in rendered
    assert "2 / 6, 4 / 4" in rendered
    assert "| joint | 0 | 2.400 | 0.000 |" in rendered  # one seed: its figure alone
