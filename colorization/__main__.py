"""`python -m colorization ...` is the `colorize` command."""

from colorization.cli import main

main()
