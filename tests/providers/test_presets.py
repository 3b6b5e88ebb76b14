"""Presets are data: each fills in `OpenAIOptions` defaults, the config's own values win, an unknown name is a
config error naming the field, and what a preset says shows in the provider's capabilities and payload."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from providers.base import ANY_DIMENSIONS, EmbedBatch
from providers.http import HttpClient
from providers.openai import OpenAIOptions, OpenAIProvider, to_payload
from providers.presets import PRESETS
from proxy.settings import ConfigError, parse_settings


def options(**fields: Any) -> OpenAIOptions:
    return OpenAIOptions.model_validate({"provider": "openai", **fields})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_openai_options_and_fills_them_in(name: str) -> None:
    assert set(PRESETS[name]) <= set(OpenAIOptions.model_fields)
    filled = options(preset=name)
    assert filled.preset == name
    assert {key: getattr(filled, key) for key in PRESETS[name]} == PRESETS[name]


def test_the_config_wins_over_the_preset_field_by_field() -> None:
    mine = options(preset="tei", api_base="http://tei.internal:80/v1", max_batch_size=16, send_dimensions=True)
    assert (mine.api_base, mine.max_batch_size, mine.send_dimensions) == ("http://tei.internal:80/v1", 16, True)
    assert mine.upstream_encoding == "base64"  # not set by the config: the preset's (here the default)
    jina_v2 = options(preset="jina", input_type_field=None)
    assert jina_v2.input_type_field is None and jina_v2.upstream_encoding == "float"


def test_no_preset_is_openai_itself() -> None:
    plain = options()
    assert (plain.preset, plain.upstream_encoding, plain.send_dimensions, plain.text_only) == (None, "base64", True,
                                                                                              False)


def test_an_unknown_preset_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        options(preset="mistrall")
    assert exc.value.errors()[0]["loc"] == ("preset",)
    with pytest.raises(ConfigError, match=r"^models\[0\]\.deployments\[1\]\.preset: Input should be 'openai'"):
        parse_settings({"models": [{"name": "m", "deployments": [
            {"provider": "openai", "preset": "tei"}, {"provider": "openai", "preset": "text-embeddings-inference"}]}]})
    with pytest.raises(ConfigError, match=r"^models\[0\]\.deployments\[0\]\.preset: "):
        parse_settings({"models": [{"name": "m", "provider": "openai", "preset": "nope"}]})


def test_a_preset_option_on_another_provider_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.deployments\[0\]\.preset: Extra inputs are not permitted"):
        parse_settings({"models": [{"name": "m", "provider": "cohere", "api_key": "k", "preset": "mistral"}]})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_capabilities_follow_the_preset(name: str) -> None:
    provider = OpenAIProvider(options(preset=name, token_ids="pass"), HttpClient())
    caps = provider.capabilities("any-model")
    preset = PRESETS[name]
    assert caps.max_inputs == preset["max_batch_size"]
    assert caps.max_tokens == preset.get("max_batch_tokens", 300_000)
    assert caps.dimensions == (ANY_DIMENSIONS if preset.get("send_dimensions", True) else None)
    assert caps.token_ids is not preset.get("text_only", False)  # text-only servers get text, whatever the config
    assert caps.input_type is ("input_type_field" in preset)


def test_the_payload_carries_input_type_in_the_servers_own_field() -> None:
    jina = options(preset="jina")

    def payload(input_type: str | None) -> dict[str, Any]:
        batch = EmbedBatch(model="jina-embeddings-v3", inputs=["a"], input_type=input_type)
        return to_payload(batch, jina.upstream_encoding, input_type_field=jina.input_type_field,
                          input_types=jina.input_types)

    assert payload("query") == {"model": "jina-embeddings-v3", "input": ["a"], "encoding_format": "float",
                                "task": "retrieval.query"}
    assert payload("document")["task"] == "retrieval.passage"
    assert payload("separation")["task"] == "separation"  # Jina's own value, as it is
    assert "task" not in payload(None)
    assert "task" not in to_payload(EmbedBatch(model="m", inputs=["a"], input_type="query"), "base64")
