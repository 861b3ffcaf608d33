"""`python -m addons` is the `aigw` command."""

from addons.cli import main

main()
