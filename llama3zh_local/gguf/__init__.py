"""Reading GGUF files: headers, metadata summaries, tensor tables."""
