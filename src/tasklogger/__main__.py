"""``python -m tasklogger`` runs the CLI."""

from .cli import main

main()
