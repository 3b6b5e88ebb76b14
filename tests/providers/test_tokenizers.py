"""cl100k: which token ids it can decode."""

from __future__ import annotations

import numpy as np

from providers.tokenizers import cl100k


def test_undecodable_are_exactly_the_ids_decode_refuses() -> None:
    tokenizer = cl100k()
    ids = np.arange(tokenizer.vocab_size + 3, dtype=np.uint64)
    refused = [int(i) for i in tokenizer.undecodable(ids)]
    assert refused == [100256, *range(100261, 100276), 100277, 100278, 100279]
    assert tokenizer.decode([i for i in range(tokenizer.vocab_size) if i not in refused])  # no KeyError
