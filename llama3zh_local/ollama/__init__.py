"""Ollama: Modelfiles (its quoting rules and the builder) and its server's API."""
