"""An Avalanche plugin's state as safetensors + JSON (Avalanche's own checkpoints are dill pickles).

`encode` turns the attributes a plugin keeps between experiences (dicts of tensors or of Avalanche's
`ParamData`, tuples, numbers, nested) into a JSON document whose tensors are references
(`{"tensor": "t12"}`) into one safetensors file; `decode` rebuilds them. Only these kinds are
written: anything else is a TypeError naming the attribute, never a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save(folder: Path, stem: str, document: dict[str, Any]) -> None:
    """`document` (plain values, tensors, ParamData) as `<stem>.safetensors` + `<stem>.json` in `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = {key: _encode(value, tensors, key) for key, value in document.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    (folder / f"{stem}.json").write_text(json.dumps(encoded, indent=1))


def load(folder: Path, stem: str, device: torch.device) -> dict[str, Any] | None:
    """The document `save` wrote, tensors on `device`; None when `folder` has none."""
    if not (folder / f"{stem}.json").is_file():
        return None
    tensors = load_file(str(folder / f"{stem}.safetensors"), device=str(device))
    document = json.loads((folder / f"{stem}.json").read_text())
    return {key: _decode(value, tensors, device) for key, value in document.items()}


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    from avalanche.training.utils import ParamData

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        ref = f"t{len(tensors)}"
        tensors[ref] = value.detach().contiguous().cpu().clone()
        return {"tensor": ref}
    if isinstance(value, ParamData):
        return {"param": value.name, "data": _encode(value.data, tensors, where)}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, tensors, where) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors, where), _encode(v, tensors, where)] for k, v in value.items()]}
    if isinstance(value, set):
        return {"set": sorted(_encode(v, tensors, where) for v in value)}
    raise TypeError(f"{where}: a {type(value).__name__} is not written to a version's state (tensors and JSON only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    from avalanche.training.utils import ParamData

    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        return tensors[value["tensor"]]
    if "param" in value:
        data = _decode(value["data"], tensors, device)
        return ParamData(value["param"], init_tensor=data, device=device)
    if "tuple" in value:
        return tuple(_decode(v, tensors, device) for v in value["tuple"])
    if "list" in value:
        return [_decode(v, tensors, device) for v in value["list"]]
    if "set" in value:
        return set(value["set"])
    return {_decode(k, tensors, device): _decode(v, tensors, device) for k, v in value["dict"]}
