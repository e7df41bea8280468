"""Materialise a LoRA version: merge its adapter into the parent's weights -> a complete model directory.

    python -m strategies.materialize VERSION_DIR PARENT_MODEL_DIR OUT_DIR

The result loads with plain `AutoModelForSequenceClassification.from_pretrained`, without peft.
A version's `model-config/` holds the model config (its `id2label` may have grown past the parent's)
and the tokenizer; `adapter/` is the peft adapter, whose saved modules include the classifier head.
"""

from __future__ import annotations

import sys
from pathlib import Path


def materialize(version_dir: Path, parent_dir: Path, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(version_dir / "model-config")
    base = AutoModelForSequenceClassification.from_pretrained(parent_dir, config=config, ignore_mismatched_sizes=True)
    merged = PeftModel.from_pretrained(base, version_dir / "adapter").merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(version_dir / "model-config").save_pretrained(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    materialize(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
