"""The stable train/eval split: a hash of each text's UTF-8 bytes, the same on every machine.

CRC-32 (zlib, IEEE 802.3) of the bytes, spread over 64 bits by the splitmix64 finalizer in numpy:
fixed, portable arithmetic, so a home moved to another machine or Python keeps its splits. A text
is held out when its hash falls below `eval_fraction * 2**64`; the same text always lands in the
same split. Not a cryptographic hash, and it needs not be one: it only has to spread texts evenly.
CRC-32 costs a quarter of a keyed hash per row, which matters at a million rows.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np


def _splitmix64(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = h + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """uint64 hash of every text."""
    crcs = np.fromiter(map(zlib.crc32, map(str.encode, texts)), dtype=np.uint64, count=len(texts))
    return _splitmix64(crcs)


def threshold(eval_fraction: float) -> np.uint64:
    return np.uint64(min(int(eval_fraction * 2.0**64), 2**64 - 1))


def eval_mask(texts: Sequence[str], eval_fraction: float) -> np.ndarray:
    """True for each text that belongs to the held-out split."""
    return text_hashes(texts) < threshold(eval_fraction)


_MASK = (1 << 64) - 1


def text_hash(text: str) -> int:
    """The same hash as `text_hashes`, for one text, in plain Python integers."""
    z = (zlib.crc32(text.encode()) + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def is_eval(text: str, eval_fraction: float) -> bool:
    return text_hash(text) < int(threshold(eval_fraction))
