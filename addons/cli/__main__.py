"""`python -m addons.cli` is the `aigw` command."""

from addons.cli import main

main()
