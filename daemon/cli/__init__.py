"""The `lifelong` command line (`commands`) and the documents only it prints (`status`, `versions`).

`main` is the console script's entry point (`daemon.cli:main`); `python -m daemon.cli` runs it too."""

from daemon.cli.commands import main

__all__ = ["main"]
