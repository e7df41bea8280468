"""Where a chat candidate's answer loss on earlier batches moved: the end token or the answer's own tokens.

    python -m bench.chat_tokens HOME [--batches 1,2] [--section NAME]

HOME is a home the chat bench kept (`python -m bench.quality --stream chat --keep-homes`: every
version's weights, rejected candidates included); it is read, never written (an adapter version is
merged into a scratch folder). For every version after the first, against the model it started
from (its parent), on each earlier batch's held-out rows (the daemon's own split): the change in
answer loss, in nats per answer token as the gate reads it, split into what the end token
contributes and what the answer's other tokens do; the end token's mean loss before and after; how
many rows' end token got worse (a row whose answer `model.max_length` cut has no end token); and,
where the answers end (teacher-forced, after the reference answer): the rows where an end token is
each model's likeliest next token, and the token whose probability there rose most on average. A
short answer's end token is a large share of its tokens, so a model that stops ending short answers
shows here as a rise on the short-answer batches. The table goes to stdout and, with `--section`,
into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from bench.report import machine, write_section


# per row: its answer tokens' losses; where the answer ends, (an end token is the likeliest next token,
# the next-token probabilities of every other token)
Scored = tuple[list[list[float | None]], list[Any]]


def token_losses(model_dir: Path, rows: dict[int, list[dict[str, Any]]], max_length: int) -> dict[int, Scored]:
    """By batch: each row's cross-entropy on each of its answer tokens, the end token last (None in
    its place where `max_length` cut the answer before its end); and where the answer ends, whether
    one of the model's end tokens (as its generation reads them) is the likeliest next token there,
    and the probabilities of the other tokens, the end tokens' set to 0 (None where it was cut)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from strategies.data import IGNORE
    from strategies.tasks.causal_lm import EVAL_BATCH, CausalLM, end_tokens

    task = CausalLM()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stops = sorted(end_tokens(model, tokenizer))
    found: dict[int, Scored] = {}
    with torch.no_grad():
        for batch, batch_rows in rows.items():
            encoded = task.encode(batch_rows, tokenizer, [], max_length)
            found[batch] = ([], [])
            for start in range(0, len(encoded), EVAL_BATCH):
                inputs = encoded.collate(range(start, min(start + EVAL_BATCH, len(encoded))))
                logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
                targets = inputs["labels"][:, 1:]
                each = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
                for i in range(len(targets)):
                    kept = targets[i] != IGNORE
                    ends = bool(targets[i][kept][-1] == tokenizer.eos_token_id)  # not when max_length cut the answer
                    found[batch][0].append(each[i][kept].tolist() + ([] if ends else [None]))
                    if not ends:
                        found[batch][1].append(None)
                        continue
                    probabilities = logits[i, int(kept.nonzero()[-1])].float().softmax(-1)
                    stopped = int(probabilities.argmax()) in stops
                    probabilities[stops] = 0.0
                    found[batch][1].append((stopped, probabilities))
    return found


def split(before: Scored, after: Scored, decode: Callable[[int], str] = str) -> dict[str, Any]:
    """The change from `before` to `after` on one batch's rows, per answer token, and its two parts.
    Where the answers end: the rows whose likeliest next token there is an end token under each
    model, and the other token whose mean probability there rose most (its `decode`d text and mean
    probability under each; None when none rose)."""
    (losses_before, p_before), (losses_after, p_after) = before, after
    ended = [(b[-1], a[-1]) for b, a in zip(losses_before, losses_after) if b[-1] is not None]
    tokens = sum(len(row) for row in losses_before) - (len(losses_before) - len(ended))
    end = sum(a - b for b, a in ended)
    content = sum(sum(a[:-1]) - sum(b[:-1]) for b, a in zip(losses_before, losses_after))
    found = {"rows": len(losses_before), "ended": len(ended), "tokens": tokens, "change": (end + content) / tokens,
             "end": end / tokens, "content": content / tokens,
             "end_before": sum(b for b, _ in ended) / len(ended) if ended else None,
             "end_after": sum(a for _, a in ended) / len(ended) if ended else None,
             "end_worse": sum(a > b for b, a in ended), "rival": None,
             "stops_before": sum(p[0] for p in p_before if p is not None),
             "stops_after": sum(p[0] for p in p_after if p is not None)}
    pairs = [(b[1], a[1]) for b, a in zip(p_before, p_after) if b is not None]
    if pairs:
        gain = sum(a - b for b, a in pairs) / len(pairs)  # an end token's is 0: never above a gain
        token = int(gain.argmax())
        if gain[token] > 0:
            found["rival"] = (decode(token), sum(float(b[token]) for b, _ in pairs) / len(pairs),
                              sum(float(a[token]) for _, a in pairs) / len(pairs))
    return found


def measure(home: Path, batches: list[int] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every candidate's `split` on each earlier batch, and the run's strategy and seed."""
    from transformers import AutoTokenizer

    from daemon.ingest.store import Store
    from registry.registry import Registry

    with Registry(home / "registry", recover=False) as registry:
        # the versions of the stream's batches (a version without one, an imported model, is no candidate)
        records = [r for r in registry.versions() if "experience" in r.info.get("data", {})]
        config = records[0].info["config"]
        max_length = int(config["model"]["max_length"])  # as the versions were scored
        run = {"strategy": records[0].strategy, "seed": config["train"]["seed"]}
        decisions = {r.version: registry.decision_record(r.version) for r in records}
        batch_of = {r.version: int(r.info["data"]["experience"]) for r in records}
        wanted = sorted(set(batches or range(1, max(batch_of.values()))))
        with Store(home / "state" / "rows.sqlite", readonly=True) as store:
            rows = {j: [{"prompt": p, "completion": c} for p, c in store.iter_rows(j, "eval", ("prompt", "completion"))]
                    for j in wanted}
        losses: dict[str, dict[int, Scored]] = {}
        scratch = tempfile.TemporaryDirectory(prefix="chat-tokens-")
        model_dir = merged(registry, Path(scratch.name))

        def of(version: str) -> dict[int, Scored]:
            if version not in losses:
                losses[version] = token_losses(model_dir(version), {j: r for j, r in rows.items() if r}, max_length)
            return losses[version]

        tokenizer = AutoTokenizer.from_pretrained(model_dir(records[0].version))

        def decode(token: int) -> str:
            return tokenizer.decode([token])

        found = []
        children = Counter(r.parent for r in records)  # a version's figures are kept until its last child's turn
        for record in records:
            earlier = [j for j in wanted if j < batch_of[record.version]]
            if record.parent in batch_of and earlier:
                decision = decisions[record.version]
                before, after = of(record.parent), of(record.version)
                found.append({"version": record.version, "batch": batch_of[record.version], "parent": record.parent,
                              "decision": decision.decision if decision else None,
                              "earlier": {j: split(before[j], after[j], decode) for j in earlier if rows[j]}})
            children[record.parent] -= 1
            for version in (record.parent, record.version):
                if children[version] <= 0:
                    losses.pop(version, None)
    scratch.cleanup()
    return found, run


def merged(registry: Any, scratch: Path) -> Callable[[str], Path]:
    """A version's complete model directory: a full version's own, an adapter version merged into
    its parent's in `scratch` (the home's registry, whose merged copies the daemon evicts, is left
    as it is)."""
    from strategies.materialize import materialize

    def model_dir(version: str) -> Path:
        record = registry.get(version)
        path = registry.artifacts.fetch(version)
        if record.kind == "full":
            return path / "model"
        out = scratch / version
        if not out.is_dir():
            materialize(path, model_dir(record.parent), out)
        return out

    return model_dir


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rival(rival: tuple[str, float, float] | None) -> str:
    """A token as a code span in a table cell, with its mean probability before and after."""
    if rival is None:
        return "-"
    text = json.dumps(rival[0], ensure_ascii=False).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence} ({rival[1]:.2f} -> {rival[2]:.2f})"


def table(found: list[dict[str, Any]]) -> str:
    lines = ["| candidate (batch, decision) | against | earlier batch | rows / answer tokens | change | from the end token | "
             "from the other tokens | end token's loss | rows whose end token got worse | "
             "rows an end token is likeliest at the end | the token gaining most there (mean probability) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for f in found:
        for j, s in f["earlier"].items():
            lines.append(f"| {f['version']} ({f['batch']}, {f['decision']}) | {f['parent']} | {j} | {s['rows']} / {s['tokens']} | "
                         f"{s['change']:+.3f} | {s['end']:+.3f} | {s['content']:+.3f} | {_fmt(s['end_before'])} -> {_fmt(s['end_after'])} | "
                         f"{s['end_worse']} of {s['ended']} | {s['stops_before']} -> {s['stops_after']} of {s['ended']} | {_rival(s['rival'])} |")
    return "\n".join(lines)


def totals(found: list[dict[str, Any]]) -> dict[str, float]:
    """Over every candidate and earlier batch where the loss rose: the share of the rise the end token made."""
    rose = [s for f in found for s in f["earlier"].values() if s["change"] > 0]
    change = sum(s["change"] * s["tokens"] for s in rose)
    end = sum(s["end"] * s["tokens"] for s in rose)
    return {"cases": len(rose), "end_share": end / change if change else 0.0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--batches", default=None, help="comma-separated earlier batches (default: every one)")
    parser.add_argument("--section", default=None, help="the BENCHMARKS.md section to write")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    found, run = measure(args.home, [int(b) for b in args.batches.split(",")] if args.batches else None)
    if args.json:
        print(json.dumps({**run, "candidates": found}, indent=2))
        return
    share = totals(found)
    body = "\n".join([table(found), "",
                      f"Where an earlier batch's loss rose ({share['cases']} cases), the end token made "
                      f"{share['end_share']:.0%} of the rise."])
    print(body)
    if args.section:
        command = "python -m bench.chat_tokens " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(args.section, "\n".join([
            "## Chat: where forgetting falls (`bench/chat_tokens.py`)", "", f"Command: `{command}`", "",
            f"Machine: {machine()}. The home of a chat bench run kept with `--keep-homes`: `{run['strategy']}`, seed "
            f"{run['seed']}. Each candidate against the model it started from, on each earlier batch's held-out rows; "
            "changes in nats per answer token (the gate's answer loss), split into the end token's part and the other "
            "tokens'.", "", body]))


if __name__ == "__main__":
    main()
