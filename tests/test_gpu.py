"""CUDA paths of the learning engine (bf16 autocast, device placement, the child on a GPU).

Marked `gpu`: skipped where torch sees no CUDA device (CI); run on a GPU box with `pytest -m gpu`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from strategies.abc import build
from strategies.loop import _autocast, train
from tests.test_learning import context, loop, sections, toy

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_autocast_is_bf16_on_cuda_and_off_when_asked() -> None:
    assert _autocast(torch.device("cuda"), "auto").fast_dtype == torch.bfloat16
    assert _autocast(torch.device("cuda"), "auto")._enabled
    assert not _autocast(torch.device("cuda"), "fp32")._enabled
    assert not _autocast(torch.device("cpu"), "auto")._enabled


# A random-init tiny base learns through adapters alone only barely (0.84 on CPU in fp32, 0.53 in
# bf16 on an H200): for LoRA the check is that the adapters trained, not what they reached.
@pytest.mark.parametrize(("strategy", "lr", "epochs", "least"),
                         [("finetune", 3e-3, 3, 0.75), ("lora+replay", 3e-2, 5, None), ("ewc+lwf", 3e-3, 3, 0.75)])
def test_training_on_cuda_learns_in_bf16(tiny_model: Path, strategy: str, lr: float, epochs: int, least: float | None) -> None:
    labels = ["sport", "food"]
    rows = toy(labels, 80, seed=1)
    ctx = context(tiny_model, labels, rows)
    ctx.device = torch.device("cuda")
    stats = train(ctx, build(strategy, sections(replay={"buffer_rows": 40})), loop(epochs=epochs, lr=lr, batch_size=16))
    assert next(ctx.model.parameters()).device.type == "cuda"
    assert next(ctx.model.parameters()).dtype == torch.float32  # master weights stay fp32 under autocast
    assert stats["train_samples"] > 0 and stats["samples_per_second"] > 0
    found = [{"text": t, "label": l} for t, l in rows]
    accuracy = ctx.task.score(found, ctx.task.predict(ctx.model, ctx.tokenizer, found, labels, ctx.device, 128),
                              labels)["accuracy"]
    if least is not None:
        assert accuracy > least, accuracy
    else:
        adapters = [p for n, p in ctx.model.named_parameters() if "lora_B" in n]
        assert adapters and all(torch.isfinite(p).all() for p in adapters)
        assert any(p.abs().sum() > 0 for p in adapters)  # lora_B starts at zero: it moved


def test_child_runs_on_cuda(tmp_path: Path, tiny_model: Path) -> None:
    from daemon.update.launcher import ChildRun
    from tests.test_child import make_spec

    spec_path = make_spec(tmp_path, tiny_model, strategy="lora+replay", champion=tiny_model, parent="v0001")
    spec = json.loads(spec_path.read_text())
    spec["device"] = "auto"
    spec_path.write_text(json.dumps(spec))
    events: list[dict] = []
    results = ChildRun(spec_path, events.append).start().wait()
    assert results["scores"]["candidate"]["1"]["rows"] == 20
    assert any(e["event"] == "step" for e in events)
