"""A known function from input to vector, so a test can check every vector it gets back."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def input_key(item: str | Sequence[int]) -> str:
    return item if isinstance(item, str) else "ids:" + ",".join(map(str, item))


def vector_for(item: str | Sequence[int], dims: int) -> np.ndarray:
    """Deterministic, unit-length, different for every input."""
    seed = int.from_bytes(hashlib.sha256(input_key(item).encode()).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return vec / np.linalg.norm(vec)
