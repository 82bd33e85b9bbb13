"""HF checkpoint + vocab -> GGUF; LoRA merge; GGUF -> HF export."""
