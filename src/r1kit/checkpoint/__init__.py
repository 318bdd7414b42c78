"""Checkpoint IO: the Hugging Face layout (hf.py), GGUF import (gguf.py), FP8 block dequantisation (fp8.py)."""
