"""LangChain's OpenAIEmbeddings, on its default path (token ids, cl100k_base by name), against the local model."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai
from langchain_openai import OpenAIEmbeddings

from testkit.servers import ThreadedServer

LOCAL = "all-MiniLM-L6-v2"


def test_langchain_default_token_path(local_gateway: ThreadedServer) -> None:
    sent: list[dict[str, object]] = []
    client = httpx.Client(event_hooks={"request": [lambda r: sent.append(json.loads(r.read()))]})
    embeddings = OpenAIEmbeddings(model=LOCAL, base_url=local_gateway.url + "/v1", api_key="unused",
                                  http_client=client, max_retries=0)
    texts = ["LangChain splits text into token ids", "and sends the ids, not the text"]
    docs = embeddings.embed_documents(texts)
    query = embeddings.embed_query("a query")

    # LangChain really took its token-id path: every input it sent is a list of cl100k ids.
    assert sent and all(isinstance(item, list) for body in sent for item in body["input"])  # type: ignore[union-attr]
    sdk = openai.OpenAI(base_url=local_gateway.url + "/v1", api_key="unused")
    expected = sdk.embeddings.create(model=LOCAL, input=[*texts, "a query"]).data
    np.testing.assert_allclose(docs, [e.embedding for e in expected[:2]], atol=1e-5)
    np.testing.assert_allclose(query, expected[2].embedding, atol=1e-5)
