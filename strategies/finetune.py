"""`finetune`: plain training on the new data; the baseline that forgets."""

from __future__ import annotations

from strategies.abc import Strategy


class Finetune(Strategy):
    name = "finetune"
    order = 10
