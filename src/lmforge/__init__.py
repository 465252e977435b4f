"""lmforge: from raw text to a trained language model and back to text."""

__version__ = "0.1.0"
