"""Hugging Face in and out: model directories, tokenizers, and starting a run from them."""
