"""Materialise a LoRA version: merge its adapter into the parent's weights -> a complete model directory.

    python -m strategies.materialize VERSION_DIR PARENT_MODEL_DIR OUT_DIR

The result loads with the task's plain `AutoModelFor...from_pretrained`, without peft. A version's
`model-config/` holds the model config (its `architectures` names the model class; its `id2label`
may have grown past the parent's) and the tokenizer; `adapter/` is the peft adapter, whose saved
modules include the task's head.
"""

from __future__ import annotations

import sys
from pathlib import Path

# the model classes a version may name: one per task's head (a config cannot name any other attribute)
ARCHITECTURE_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForCausalLM")


def materialize(version_dir: Path, parent_dir: Path, out: Path) -> None:
    import transformers
    from peft import PeftModel

    config = transformers.AutoConfig.from_pretrained(version_dir / "model-config")
    architecture = (config.architectures or [""])[0]
    model_class = getattr(transformers, architecture, None) if architecture.endswith(ARCHITECTURE_SUFFIXES) else None
    if model_class is None:
        raise ValueError(f"{version_dir.name}/model-config names no known model class ({architecture!r})")
    base = model_class.from_pretrained(parent_dir, config=config, ignore_mismatched_sizes=True)
    merged = PeftModel.from_pretrained(base, version_dir / "adapter").merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(version_dir / "model-config").save_pretrained(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    materialize(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
