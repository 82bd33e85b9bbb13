"""The one place that reaches llama.cpp: its C API (``engine``), its compiled tools (``tools``)."""
