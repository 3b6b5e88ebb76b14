"""Known OpenAI-compatible servers, as data: the defaults a `preset:` fills in for the `openai` provider.

Each value is what that server documents (or ships with) for its embeddings route; anything the
config sets itself wins. A preset is never code: behaviour differences are options.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "openai": {"api_base": "https://api.openai.com/v1", "max_batch_size": 2048, "max_batch_tokens": 300_000},
    "mistral": {"api_base": "https://api.mistral.ai/v1", "max_batch_size": 512, "max_batch_tokens": 16_384,
                "send_dimensions": False, "upstream_encoding": "float"},
    "jina": {"api_base": "https://api.jina.ai/v1", "max_batch_size": 2048, "upstream_encoding": "float"},
    "together": {"api_base": "https://api.together.xyz/v1", "max_batch_size": 2048, "send_dimensions": False,
                 "upstream_encoding": "float"},
    "fireworks": {"api_base": "https://api.fireworks.ai/inference/v1", "max_batch_size": 256,
                  "upstream_encoding": "float"},
    "deepinfra": {"api_base": "https://api.deepinfra.com/v1/openai", "max_batch_size": 1024,
                  "send_dimensions": False, "upstream_encoding": "float"},
    # TEI's router refuses more than --max-client-batch-size inputs (32 by default).
    "tei": {"api_base": "http://127.0.0.1:8080/v1", "max_batch_size": 32, "send_dimensions": False,
            "upstream_encoding": "float"},
    "vllm": {"api_base": "http://127.0.0.1:8000/v1", "max_batch_size": 2048, "send_dimensions": False,
             "upstream_encoding": "float"},
    # Ollama's OpenAI route takes strings only: token ids are decoded with cl100k first.
    "ollama": {"api_base": "http://127.0.0.1:11434/v1", "max_batch_size": 512, "send_dimensions": False,
               "upstream_encoding": "float", "text_only": True},
    "infinity": {"api_base": "http://127.0.0.1:7997", "max_batch_size": 2048, "send_dimensions": False,
                 "upstream_encoding": "float"},
}
