"""The one place that reaches llama.cpp: its C API (``engine``) and its compiled tools (``tools``)."""
