"""Files on disk: atomic writes and temporary names, state records, user config, cleanup."""
