"""The lifelong service: config, CLI, inbox and row store, update cycle, gate, scheduler, metrics.

The daemon's parent process never imports torch; learning runs in a child (see `strategies`).
"""

__version__ = "0.1.0"
