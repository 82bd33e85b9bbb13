"""Quantization: types, importance matrices, quantize, evaluate, recommend."""
