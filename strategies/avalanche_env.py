"""Importing Avalanche (the `lifelong[avalanche]` extra) in the training child, and nowhere else.

Two things stand between `import avalanche.training` and a clean process:

- Avalanche writes `~/.avalanche/config.json` when it is imported (its dataset folder setting). The
  import runs with HOME pointed at a throwaway folder, removed afterwards, so nothing is written
  outside the daemon's home; HOME is restored before anything else runs.
- PyPI's Linux torchvision wheels are CUDA builds. Next to the CPU torch their `_C` library does not
  load, and `import torchvision` then fails with "operator torchvision::nms does not exist" (its
  fake-tensor registrations name two operators the library would have defined). When the library
  cannot load, the two operators are declared first (schemas only, no kernel): Avalanche imports
  torchvision for its vision benchmarks and models, and its plugins for text never call them.
  transformers imports torchvision too, whenever it is installed, so the declaration cannot wait
  for Avalanche: `watch_torchvision` (called when the `strategies` package is imported) makes the
  first `import torchvision` of any process declare them, without importing torch before that.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from registry.errors import MissingExtra

EXTRA = "avalanche"
_LOCK = threading.Lock()
_DECLARED: list = []  # the torch.library.Library holding the declared operators, kept alive


def installed() -> bool:
    """Whether the extra is importable (checked without importing it: the daemon's config does this)."""
    try:
        return importlib.util.find_spec("avalanche") is not None
    except (ImportError, ValueError):
        return False


def load() -> ModuleType:
    """`avalanche.training` imported with the two guards above; MissingExtra when the extra is absent."""
    import sys

    if "avalanche.training" in sys.modules:
        return sys.modules["avalanche.training"]
    if not installed():
        raise MissingExtra(EXTRA, "an avalanche:* strategy needs avalanche-lib")
    with _LOCK:
        _declare_torchvision_operators()
        home = os.environ.get("HOME")
        scratch = tempfile.mkdtemp(prefix="lifelong-avalanche-")
        os.environ["HOME"] = scratch
        try:
            import avalanche.training as training
        finally:
            if home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = home
            shutil.rmtree(scratch, ignore_errors=True)
    return training


class _BeforeTorchvision:
    """A meta-path finder that finds nothing: it declares the operators when torchvision is first looked up."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torchvision":
            import sys

            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _declare_torchvision_operators()
        return None


def watch_torchvision() -> None:
    import sys

    if "torchvision" not in sys.modules and not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())


def _declare_torchvision_operators() -> None:
    """Declare torchvision::nms and torchvision::qnms when torchvision's own library cannot define them."""
    import torch

    if _DECLARED or _torchvision_library_loads(torch):
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        if not _has_schema(torch, name):
            library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _DECLARED.append(library)


def _has_schema(torch: ModuleType, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _torchvision_library_loads(torch: ModuleType) -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to declare (Avalanche's import will say what is missing)
    folder = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
        return True
    except (OSError, RuntimeError):
        return False
