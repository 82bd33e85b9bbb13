"""transformers as a second engine: HF checkpoints (and unmerged LoRAs) for chat and as the
reference that ``eval fidelity`` compares GGUFs with. Needs the ``[train]`` extra."""
