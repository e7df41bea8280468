"""`python -m daemon.cli`: the same command line as the `lifelong` script."""

from daemon.cli.commands import main

main()
