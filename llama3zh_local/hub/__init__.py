"""Hugging Face and ModelScope: sources, downloads, pull; the local store (list/show/rm)."""
