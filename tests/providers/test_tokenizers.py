"""cl100k: which token ids it can decode, and how it counts text."""

from __future__ import annotations

import numpy as np
import tiktoken

from providers.tokenizers import CL100K_OFFLINE, cl100k


def test_undecodable_are_exactly_the_ids_decode_refuses() -> None:
    tokenizer = cl100k()
    ids = np.arange(tokenizer.vocab_size + 3, dtype=np.uint64)
    refused = [int(i) for i in tokenizer.undecodable(ids)]
    assert refused == [100256, *range(100261, 100276), 100277, 100278, 100279]
    assert tokenizer.decode([i for i in range(tokenizer.vocab_size) if i not in refused])  # no KeyError


def test_count_reads_special_token_text_as_plain_text() -> None:
    # As OpenAI counts: "<|endoftext|>" in an input is text (7 tokens), not the one special token 100257.
    tokenizer = cl100k()
    encoding = tiktoken.get_encoding(CL100K_OFFLINE)
    texts = ["hello world", "<|endoftext|>", "a<|fim_prefix|>b", "héllo wörld 😀", " "]
    assert tokenizer.count(texts) == [len(encoding.encode(t, disallowed_special=())) for t in texts]
    assert tokenizer.count(["<|endoftext|>"]) == [7]
    assert tokenizer.count([]) == []
