"""embedgate: an OpenAI-compatible embeddings gateway."""
