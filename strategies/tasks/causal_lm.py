"""`causal_lm`: a decoder language model learns to answer prompts (instruction data, chat).

A row is `{"prompt": [{"role", "content"}, ...], "completion": str}`: the conversation before the
answer and the answer (the daemon turns an inbox `{"prompt", "completion"}` row into one user message,
daemon/ingest/chat.py). The prompt is rendered through the tokenizer's chat template with the
assistant's turn opened (exactly what the model sees when it is asked later); a tokenizer without a
template gets the prompt's text as it is. The answer's tokens follow, then the end token.

Training loss: cross-entropy on the answer's tokens only, the end token included, so the model
learns where an answer stops. Targets are per position (IGNORE on the prompt); padding is ignored
because collation pads targets with IGNORE and masks attention by each row's length, never by token
id: a tokenizer whose pad token is its end token (SmolLM2's) would otherwise lose the end token from
the labels and teach the model never to stop.

Held-out figures: `answer_loss` (mean cross-entropy per answer token, end token included; lower is
better), `perplexity` (its exp), `exact_match` (greedy generation equals the completion, white space
and case aside, and stopped with the end token) on rows whose completion has at most
SHORT_ANSWER_TOKENS tokens, and the generation check: of the prompts generated (the short rows and
up to CHECK_ROWS others), how many `stopped` with the end token and how many were `looping`
(repeating a few tokens to the length limit).

LoRA wraps every linear projection of the decoder layers, never the embeddings or the output head
(with tied embeddings they are one matrix: an adapter on it would store it whole, and a merge could
untie it). Distillation (`lwf`) is on the prompt positions, the champion's next-token distribution
where the rows do not say what comes next, and on the answer positions of replayed rows: there the
champion's distribution is what the model knew of an earlier batch's answers, its end token
included (a model learning longer answers otherwise ends short earlier ones less surely). A new
row's answer positions are left to the cross-entropy, which must move them. (Replay also mixes in
rows of batches given up after failed attempts, which the champion never learned; they are
distilled too, beside their cross-entropy.)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from strategies import models
from strategies.data import IGNORE, Encoded, sequential_batches
from strategies.tasks.abc import Prediction, Row, Task

SHORT_ANSWER_TOKENS = 16  # exact match is scored on rows whose completion is at most this long
CHECK_ROWS = 4  # longer rows of each set generated for the stop check
GENERATION_MARGIN = 8  # tokens a generation may run past the completion's length (and its end token)
DEFAULT_MAX_NEW_TOKENS = 64  # `lifelong predict` without --max-new-tokens
EVAL_BATCH = 8  # rows per forward when scoring: the logits are (rows, tokens, vocabulary)
ROLES = ("system", "user", "assistant")


class NoEndToken(ValueError):
    """The tokenizer has no end-of-sequence token: an answer could never be taught to stop."""


class CausalLM(Task):
    name = "causal_lm"

    def load(self, source: str, labels: list[str]) -> tuple[torch.nn.Module, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = models.resolve(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            # float32 whatever the checkpoint's dtype: training updates and the loss need it on the CPU
            # (CUDA trains under bf16 autocast)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except OSError as exc:
            raise models.ModelSourceError(f"cannot load model {source!r}: {exc}") from None
        if tokenizer.eos_token_id is None:
            raise NoEndToken(f"{source}: the tokenizer has no end-of-sequence token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked by attention, never by its id
        return model, tokenizer

    def adapter_targets(self, model: torch.nn.Module) -> list[str]:
        return linear_projections(model)

    def adapter_saved_modules(self, model: torch.nn.Module) -> list[str]:
        return []  # no head that grows; the output head stays frozen (and tied)

    # -- training --------------------------------------------------------------------------------
    def encode(self, rows: Sequence[Row], tokenizer: Any, labels: list[str], max_length: int,
               targets: bool = True) -> Encoded:
        ids, found = [], []
        prompts = prompt_ids(tokenizer, rows)
        answers = answer_ids(tokenizer, rows) if targets else [[] for _ in rows]
        for prompt, answer in zip(prompts, answers):
            prompt, answer = fit(prompt, answer, max_length)
            ids.append(prompt + answer)
            found.append([IGNORE] * len(prompt) + answer)
        return Encoded(ids, found, tokenizer.pad_token_id)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None,
             reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy per answer token (position t predicts token t + 1); "sum" over tokens."""
        targets = batch["labels"][:, 1:]
        if not bool((targets != IGNORE).any()):
            return logits.float().sum() * 0.0  # every answer truncated away: no signal, not NaN
        shifted = logits[:, :-1].float()
        return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                               reduction=reduction)

    def targets(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer tokens (the end token included), each against the model's most likely next token."""
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE
        return logits[:, :-1].argmax(-1)[mask], targets[mask]

    def outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], known: int,
                replayed: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits at the prompt positions (those whose next token is not an answer token)
        and, on replayed rows, at the answer positions too."""
        targets = batch["labels"][:, 1:]
        mask = (targets == IGNORE) & (batch["attention_mask"][:, 1:] == 1)
        if replayed is not None:
            mask |= (targets != IGNORE) & replayed[:, None]
        return logits[:, :-1][mask]

    def class_weights(self, encoded: Encoded, count: int, device: torch.device) -> torch.Tensor | None:
        return None  # no classes to balance

    def balance_key(self, row: Row) -> str:
        return ""  # no label: class-balanced replay keeps one uniform share

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], labels: list[str],
                device: torch.device, max_length: int, batch_size: int = 64) -> list[Prediction]:
        """Rows with a completion: its answer loss (`answer_loss` per token, `answer_tokens`) and,
        for short ones and up to CHECK_ROWS others, a greedy generation. Rows whose completion is
        None (`lifelong predict`): a generation of up to the row's `max_new_tokens`
        (DEFAULT_MAX_NEW_TOKENS when absent)."""
        was_training = model.training
        model.eval()
        found: list[Prediction] = [{} for _ in rows]
        labelled = [i for i, row in enumerate(rows) if row.get("completion") is not None]
        if labelled:
            chosen = [rows[i] for i in labelled]
            encoded = self.encode(chosen, tokenizer, labels, max_length)
            for indices in sequential_batches(encoded.lengths, min(batch_size, EVAL_BATCH)):
                batch = {k: v.to(device) for k, v in encoded.collate(indices).items()}
                logits = self.forward(model, batch).float()
                targets = batch["labels"][:, 1:]
                losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE,
                                         reduction="none").sum(-1)
                counts = (targets != IGNORE).sum(-1)
                for row, i in enumerate(indices):
                    n = int(counts[row])
                    found[labelled[i]] = {"answer_loss": float(losses[row]) / n if n else None, "answer_tokens": n}
            lengths = [max(0, len(t) - 1) for t in answer_ids(tokenizer, chosen)]  # without the end token
            short = [j for j, n in enumerate(lengths) if n <= SHORT_ANSWER_TOKENS]
            longer = [j for j, n in enumerate(lengths) if n > SHORT_ANSWER_TOKENS][:CHECK_ROWS]
            asked = short + longer
            made = generate(model, tokenizer, [chosen[j] for j in asked],
                            [lengths[j] + 1 + GENERATION_MARGIN for j in asked], device, max_length)
            for j, (text, stopped, looping) in zip(asked, made):
                entry = found[labelled[j]]
                entry.update(completion=text, stopped=stopped, looping=looping)
                if lengths[j] <= SHORT_ANSWER_TOKENS:
                    entry["exact"] = stopped and same_answer(text, chosen[j]["completion"])
        asked = [i for i, row in enumerate(rows) if row.get("completion") is None]
        if asked:
            made = generate(model, tokenizer, [rows[i] for i in asked],
                            [int(rows[i].get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS) for i in asked],
                            device, max_length)
            for i, (text, stopped, _) in zip(asked, made):
                found[i] = {"completion": text, "stopped": stopped}
        model.train(was_training)
        return found

    def score(self, rows: Sequence[Row], predictions: Sequence[Prediction], labels: list[str]) -> dict[str, Any]:
        scored = [p for p in predictions if p.get("answer_tokens")]
        tokens = sum(p["answer_tokens"] for p in scored)
        loss = sum(p["answer_loss"] * p["answer_tokens"] for p in scored) / tokens if tokens else None
        exact = [bool(p["exact"]) for p in predictions if "exact" in p]
        generated = [p for p in predictions if "stopped" in p]
        return {"rows": len(rows), "answer_loss": loss,
                "perplexity": math.exp(min(loss, 50.0)) if loss is not None else None,
                "exact_match": sum(exact) / len(exact) if exact else None, "exact_match_rows": len(exact),
                "generated": len(generated), "stopped": sum(bool(p["stopped"]) for p in generated),
                "looping": sum(bool(p.get("looping")) for p in generated)}

    def correct(self, row: Row, prediction: Prediction) -> bool:
        return bool(prediction.get("exact"))


def linear_projections(model: torch.nn.Module) -> list[str]:
    """The names of the linear layers inside the decoder layers (q/k/v/o and the MLP's), never the
    output head or the embeddings."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and module is not head
                    and "lm_head" not in name and "embed" not in name})
    if not found:
        raise ValueError("no linear projections found for LoRA; set strategy.lora.target_modules")
    return found


def render(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, bool]:
    """The prompt's text up to where the answer begins, and whether the chat template made it (its
    text then holds whatever special tokens the template writes)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True), True
    if len(messages) == 1:
        return messages[0]["content"], False
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: ", False


def prompt_ids(tokenizer: Any, rows: Sequence[Row]) -> list[list[int]]:
    if not rows:
        return []
    rendered = [render(tokenizer, row["prompt"]) for row in rows]
    templated = [text for text, by_template in rendered if by_template]
    plain = [text for text, by_template in rendered if not by_template]
    ids_t = iter(tokenizer(templated, add_special_tokens=False)["input_ids"] if templated else [])
    ids_p = iter(tokenizer(plain)["input_ids"] if plain else [])  # a plain prompt gets the tokenizer's BOS
    return [list(next(ids_t) if by_template else next(ids_p)) for _, by_template in rendered]


def answer_ids(tokenizer: Any, rows: Sequence[Row]) -> list[list[int]]:
    """Each completion's tokens and the end token."""
    if not rows:
        return []
    texts = [row["completion"] or "" for row in rows]
    return [list(ids) + [tokenizer.eos_token_id] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def fit(prompt: list[int], answer: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """At most `max_length` tokens: the answer keeps at least half of them (its end first to go), the
    prompt keeps its end (where the question and the assistant's turn are)."""
    if len(prompt) + len(answer) <= max_length:
        return prompt, answer
    keep = min(len(answer), max(max_length - len(prompt), max_length // 2))
    rest = max_length - keep
    return (prompt[-rest:] if rest else []), answer[:keep]


def same_answer(generated: str, expected: str) -> bool:
    return " ".join(generated.split()).casefold() == " ".join(expected.split()).casefold()


def looping(tokens: list[int], repeats: int = 4, longest: int = 8) -> bool:
    """The generation ends in a run of one short token sequence repeated `repeats` times or more."""
    return any(len(tokens) >= repeats * k and tokens[-repeats * k:] == tokens[-k:] * repeats
               for k in range(1, longest + 1))


def end_tokens(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    ends = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ends


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], limits: Sequence[int],
             device: torch.device, max_length: int) -> list[tuple[str, bool, bool]]:
    """Greedy answers to the rows' prompts, up to each row's limit of new tokens: (text without the
    end token, stopped with the end token, looping). Prompts are left-padded in batches of similar length."""
    if not rows:
        return []
    prompts = [p[-max_length:] for p in prompt_ids(tokenizer, rows)]
    ends = end_tokens(model, tokenizer)
    pad = tokenizer.pad_token_id
    found: list[tuple[str, bool, bool]] = [("", False, False)] * len(rows)
    for indices in sequential_batches([len(p) for p in prompts], EVAL_BATCH):
        width = max(len(prompts[i]) for i in indices)
        ids = torch.full((len(indices), width), pad, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        limit = max(limits[i] for i in indices)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=limit,
                             do_sample=False, temperature=None, top_p=None, top_k=None, num_beams=1,
                             eos_token_id=sorted(ends), pad_token_id=pad)
        for row, i in enumerate(indices):
            new = out[row, width:].tolist()[: limits[i]]
            stop = next((n for n, token in enumerate(new) if token in ends), None)
            tokens = new if stop is None else new[:stop]
            found[i] = (tokenizer.decode(tokens, skip_special_tokens=True).strip(), stop is not None,
                        stop is None and looping(tokens))
    return found
