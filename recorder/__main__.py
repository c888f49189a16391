"""`python -m recorder` runs the CLI."""

from recorder.cli import main

main()
