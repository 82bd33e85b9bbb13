"""llama3zh-local: pull, convert, quantize and chat with the Chinese Llama-3 models locally."""

__version__ = "0.1.0"
