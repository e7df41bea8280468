"""The benchmark's `chat` stream (bench/streams.py): chatterbot-corpus's English question/answer
pairs, read from the package's YAML files, in four topic groups with trivia first."""

from __future__ import annotations

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
