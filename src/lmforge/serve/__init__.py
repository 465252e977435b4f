"""Serving a trained model: the engine (engine.py: continuous batching of concurrent
requests over one model) and the HTTP API on top of it."""
