"""LoRA training (``llama3zh train pt|sft``): data formats, rendering and masking, the trainer.

Needs the optional ``[train]`` extra (torch, transformers, peft, accelerate) for training itself;
reading, checking and rendering data need only ``tokenizers``.
"""
