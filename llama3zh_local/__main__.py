"""``python -m llama3zh_local`` runs the CLI."""

from .cli import main

main()
