"""The benchmark's `chat` stream (bench/streams.py): chatterbot-corpus's English question/answer
pairs, read from the package's YAML files, in four topic groups with trivia first."""

from __future__ import annotations

import pytest

from bench import streams


def test_pairs_are_read_from_the_package_files_without_the_broken_conversation() -> None:
    pairs = streams.chatterbot_pairs()
    assert sorted(pairs) == sorted(topic for group in streams.CHAT_GROUPS for topic in group) and len(pairs) == 21
    assert ("Who was the 37th President of the United States?", "Richard Nixon") in pairs["trivia"]
    # trivia.yml's one long "conversation" is a sentence split into characters: its 87 pairs are dropped
    assert len(pairs["trivia"]) == 260 and all(len(a) > 1 for a, _ in pairs["trivia"])
    assert ("New York City comprises how many boroughs?", "5") in pairs["trivia"]  # a short answer is kept
    # a conversation [s0, s1, s2] gives (s0, s1) and (s1, s2), as chatterbot trains on it
    assert len(pairs["emotion"]) == 207 and len(pairs["tech_support"]) == 1050


def test_four_files_trivia_first_each_prompt_once_deterministic() -> None:
    parts = streams.build("chat", seed=0)
    assert [p.name for p in parts] == ["chat-1-trivia.jsonl", "chat-2-knowledge.jsonl",
                                       "chat-3-small-talk.jsonl", "chat-4-computing.jsonl"]
    prompts = [row["prompt"] for part in parts for row in part.rows]
    assert len(prompts) == len(set(prompts)) == 1015  # tech_support's 1,050 pairs hold only 10 prompts
    assert all(set(row) == {"prompt", "completion"} and row["prompt"] and row["completion"]
               for part in parts for row in part.rows)
    trivia = parts[0].rows
    assert len(trivia) == 260 and sum(len(row["completion"]) <= 40 for row in trivia) >= 250  # exact-match material
    assert streams.build("chat", seed=0) == parts and streams.build("chat", seed=1) != parts
    assert [len(p.rows) for p in streams.build("chat", seed=0, per_group=100)] == [100, 100, 100, 100]


def test_the_files_are_inbox_jsonl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    paths = streams.write(streams.build("chat", per_group=5), tmp_path)
    assert [json.loads(line)["completion"] for line in paths[0].read_text().splitlines()] == \
        [row["completion"] for row in streams.build("chat", per_group=5)[0].rows]


def test_the_chat_report_judges_the_default_against_joint_and_retrain_and_renders_a_plot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """bench.quality_chat's verdicts are the issue's targets in nats and tokens; `--report` renders a
    results.json again (table, verdicts, plot) without running anything."""
    import json

    from bench import quality_chat

    def contender(matrix, em, tokens, promoted=None):  # type: ignore[no-untyped-def]
        run = {"loss": matrix, "final": {"1": {"exact_match": em}}, "train_samples": tokens // 50,
               "train_tokens": tokens, "wall_seconds": 10.0, "promoted": promoted,
               "rejected": None if promoted is None else 0}
        return {**quality_chat.figures(run), "loss_matrix": matrix, "final": run["final"], "verdicts": []}

    strategies = {
        # trivia learned at 2.0, risen to 2.04 by the end: within 0.05
        "lora+replay": contender([[2.0, None], [2.04, 3.0]], 0.5, 3_000, promoted=2),
        "joint": contender([[2.0, 2.9]], 0.5, 2_000),
        "retrain": contender([[2.0, None], [1.9, 2.8]], 0.6, 10_000),
    }
    results = {"stream": "chat", "profile": "tiny", "settings": {"seeds": [0], "per_group": 4, "max_length": 96,
                                                                  "eval_fraction": 0.3, "epochs": 1, "batch_size": 8},
               "model": "embedded:smollm2", "default": "lora+replay", "strategies": strategies, "wall_seconds": 60,
               "command": "python -m bench.quality --stream chat", "machine": "test", "date": "2026-11-30"}
    lines = quality_chat.verdicts(results)
    assert lines[0].startswith("- default (lora+replay) final answer loss 2.520 vs joint 2.450: +0.070 nats (MISSED")
    assert "largest rise of an earlier batch's loss 0.040 nats (met" in lines[1]
    assert "trivia exact match 0.50 vs joint 0.50 (met" in lines[2]
    assert "training tokens 30% of retrain's (met" in lines[3]
    (tmp_path / "results.json").write_text(json.dumps(results))
    quality_chat.main(["--profile", "tiny", "--out", str(tmp_path), "--report", "--default", "lora+replay"])
    table = (tmp_path / "table.md").read_text()
    assert "| **lora+replay** (default) | 0 | 2.520 | 0.040 | 0.50 | 60 | 3,000 | 30% | 2 / 0 | 10 |" in table
    assert (tmp_path / "matrices.png").stat().st_size > 1000


def test_splits_give_each_group_in_equal_files_with_the_same_rows() -> None:
    """quick8's stream: the same rows as four files, each group in two files in arrival order."""
    four = streams.build("chat", seed=0, per_group=64)
    eight = streams.build("chat", seed=0, per_group=64, splits=2)
    assert [p.name for p in eight[:3]] == ["chat-1a-trivia.jsonl", "chat-1b-trivia.jsonl", "chat-2a-knowledge.jsonl"]
    assert [p.group for p in eight] == [g for g in streams.CHAT_NAMES for _ in range(2)]
    assert [len(p.rows) for p in eight] == [32] * 8
    assert [row for p in eight for row in p.rows] == [row for p in four for row in p.rows]
    with pytest.raises(ValueError, match="only chat takes splits"):
        streams.build("bbc", seed=0, splits=2)
