"""Embedding backends: one module per vendor behind the `Provider` protocol in `base.py`."""
