"""Known OpenAI-compatible servers, as data: the defaults a `preset:` fills in for the `openai` provider.

Each value is what that server documents (or its source does) for its embeddings route; anything the
config sets itself wins. A preset is never code: behaviour differences are options of `OpenAIOptions`:

- `upstream_encoding`: `base64` where the server answers it (or ignores the field and answers floats,
  which the gateway reads too); `float` where base64 is not part of its documented request.
- `send_dimensions`: the server takes OpenAI's `dimensions` and cuts as embedgate would (only for
  Matryoshka models, re-normalised). False where it ignores or refuses it, pads, cuts any model, or
  cuts without re-normalising: the gateway then cuts the full vector itself, for `matryoshka: true`
  models only.
- `text_only`: the server takes strings only; token-id inputs are decoded with cl100k first, whatever
  `token_ids` says.
- `input_type_field` / `input_types`: the body field the server reads query-vs-document from.

`max_batch_tokens` is counted by the gateway in cl100k tokens. Where a server documents no cap on
inputs per call, OpenAI's 2,048 stands (narrow it with `max_batch_size`).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # https://platform.openai.com/docs/api-reference/embeddings/create (2,048 inputs, 300,000 tokens a request)
    "openai": {"api_base": "https://api.openai.com/v1", "max_batch_size": 2048, "max_batch_tokens": 300_000},

    # https://docs.mistral.ai/api/endpoint/embeddings (input: strings; encoding_format float|base64;
    # `output_dimension` on codestral-embed, never `dimensions`). 256 inputs a call: 257 is refused with code
    # 3210 "Too many inputs in request" (measured, rig-core src/providers/mistral/embedding.rs); 16,384 of
    # Mistral's own tokens overall (langchain-mistralai MAX_TOKENS): 12,000 cl100k tokens leave room, as
    # Mistral's 32k-vocabulary tokenizer cuts the same text into more tokens.
    "mistral": {"api_base": "https://api.mistral.ai/v1", "max_batch_size": 256, "max_batch_tokens": 12_000,
                "send_dimensions": False, "text_only": True},

    # https://api.jina.ai/openapi.json, https://jina.ai/embeddings (strings; `dimensions` on the Matryoshka
    # models v3/v4/clip-v2; `task` picks the LoRA adapter; base64 only through Jina's own `embedding_type`).
    # jina-embeddings-v2 has no `task`: set `input_type_field: null` there.
    "jina": {"api_base": "https://api.jina.ai/v1", "max_batch_size": 2048, "upstream_encoding": "float",
             "text_only": True, "input_type_field": "task",
             "input_types": {"query": "retrieval.query", "document": "retrieval.passage"}},

    # togethercomputer/openapi openapi.yaml EmbeddingsRequest: `model` and `input` (strings) only.
    "together": {"api_base": "https://api.together.ai/v1", "max_batch_size": 2048, "upstream_encoding": "float",
                 "send_dimensions": False, "text_only": True},

    # https://docs.fireworks.ai/api-reference/creates-an-embedding-vector-representing-the-input-text
    # (strings, at most 2,048; `dimensions` on nomic-embed-text-v1.5 and later; no `encoding_format`).
    "fireworks": {"api_base": "https://api.fireworks.ai/inference/v1", "max_batch_size": 2048,
                  "upstream_encoding": "float", "text_only": True},

    # https://docs.deepinfra.com/api-reference/openai-embeddings-1 (strings, at most 1,024; encoding_format
    # float|base64; `dimensions` pads with zeros past the native size and cuts any model: not sent).
    "deepinfra": {"api_base": "https://api.deepinfra.com/v1/openai", "max_batch_size": 1024,
                  "send_dimensions": False, "text_only": True},

    # huggingface/text-embeddings-inference router/src/main.rs (--max-client-batch-size, default 32: more is
    # a 413) and router/src/http/server.rs openai_embed (base64 since v1.3; `dimensions` since v1.8 cuts any
    # model, older versions ignore it: not sent). Token ids are the served model's own: decoded by default.
    "tei": {"api_base": "http://127.0.0.1:8080/v1", "max_batch_size": 32, "send_dimensions": False},

    # vllm-project/vllm vllm/pooling_params.py: `dimensions` only for Matryoshka models (others answer 400),
    # cut then normalised; entrypoints EmbeddingCompletionRequest takes base64 and token ids, no input cap.
    "vllm": {"api_base": "http://127.0.0.1:8000/v1", "max_batch_size": 2048},

    # ollama/ollama server/routes.go EmbedHandler: strings only ("invalid input type" otherwise); `dimensions`
    # (v0.11.11+) cuts any model and older versions ignore it: not sent; base64 since v0.12.7
    # (middleware/openai.go), older versions answer floats, which the gateway reads too. No input cap.
    "ollama": {"api_base": "http://127.0.0.1:11434/v1", "max_batch_size": 2048, "send_dimensions": False,
               "text_only": True},

    # michaelfeil/infinity libs/infinity_emb/infinity_emb/infinity_server.py: `POST {url_prefix}/embeddings`,
    # url_prefix "" by default (no /v1), port 7997; INFINITY_MAX_CLIENT_BATCH_SIZE 2048; strings only; base64;
    # `dimensions` is cut without re-normalising (batch_handler.py matryososka_slice): not sent.
    "infinity": {"api_base": "http://127.0.0.1:7997", "max_batch_size": 2048, "send_dimensions": False,
                 "text_only": True},
}
