"""Config loading: interpolation, validation messages that name the field, the CLI's check-config."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import settings_for
from proxy.settings import ConfigError, default_settings, interpolate, load_settings, parse_settings
from testkit.servers import ROOT
from tests.support.cli import run_cli


def test_interpolation_with_defaults() -> None:
    env = {"KEY": "secret", "EMPTY": ""}
    raw = {"a": "${KEY}", "b": "${MISSING:-fallback}", "c": ["x-${KEY}-y", "${EMPTY:-d}"], "d": "${MISSING}", "e": 3}
    assert interpolate(raw, env) == {"a": "secret", "b": "fallback", "c": ["x-secret-y", "d"], "d": "", "e": 3}


def test_default_yaml_is_the_embedded_default() -> None:
    assert load_settings(ROOT / "config" / "default.yaml") == default_settings()


def test_example_yaml_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings(ROOT / "config" / "example.yaml")
    names = [m.name for m in settings.models]
    assert "text-embedding-3-small" in names and "openai/*" in names
    small = settings.models[names.index("text-embedding-3-small")]
    key = small.deployments[0].api_key
    assert key is not None and key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(settings)  # secrets never print


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"models": [{"name": "m"}]}, "models[0].deployments[0]: Unable to extract tag using discriminator 'provider'"),
        ({"models": [{"name": "m", "provider": "openai", "dimensions": 0}]}, "models[0].dimensions"),
        ({"models": [{"name": "m", "provider": "openai", "colour": "red"}]}, "models[0].deployments[0].colour"),
        ({"models": [{"name": "a*b", "provider": "openai"}]}, "trailing"),
        ({"models": [{"name": "m", "provider": "openai"}, {"name": "n", "aliases": ["m"], "provider": "openai"}]},
         "declared twice"),
        ({"store": {"url": "mysql://x"}}, "store.url"),
        ({"server": {"port": "eighty"}}, "server.port"),
    ],
)
def test_errors_name_the_field(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw)
    assert fragment in str(exc.value)


def test_check_config_prints_the_route_table() -> None:
    result = run_cli("check-config", str(ROOT / "config" / "example.yaml"))
    assert result.returncode == 0, result.stderr
    assert "openai/*" in result.stdout and "all-MiniLM-L6-v2" in result.stdout and "local" in result.stdout


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("models:\n  - name: m\n    provider: openai\n    max_input_tokens: -1\n", "models[0].max_input_tokens"),
        ("models:\n  - name: m\n    provider: telepathy\n", "telepathy"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_check_config_fails_naming_the_problem(tmp_path: Path, yaml_text: str, named: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert named in result.stderr


def test_missing_file() -> None:
    result = run_cli("check-config", "/nonexistent/embedgate.yaml")
    assert result.returncode == 1 and "cannot read config" in result.stderr


def test_config_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text("models:\n  - {name: from-env, provider: openai}\n")
    monkeypatch.delenv("EMBEDGATE_CONFIG", raising=False)
    assert settings_for(None) == default_settings()
    monkeypatch.setenv("EMBEDGATE_CONFIG", str(env_file))
    assert [m.name for m in settings_for(None).models] == ["from-env"]
    assert settings_for(str(ROOT / "config" / "default.yaml")) == default_settings()


def deployments_model(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "dimensions": 8, "deployments": [{"provider": "openai", "upstream_model": name}], **extra}


@pytest.mark.parametrize(
    ("models", "fragment"),
    [
        ([deployments_model("a", fallbacks=["b"]), deployments_model("b")], "models[0].fallbacks[0]: 'b' is another "
                                                                            "embedding space"),
        ([deployments_model("a", fallbacks=["b"]), deployments_model("b", same_space_as="a", dimensions=16)],
         "models[0].fallbacks[0]: 'b' has native size 16, 'a' has 8"),
        ([deployments_model("a", fallbacks=["nope"])], "'nope' is not another configured model"),
        ([deployments_model("a", same_space_as="b"), deployments_model("b", same_space_as="a")], "circle"),
        ([{"name": "m", "deployments": [{"provider": "openai", "api_version": "2024-10-21"}]}],
         "models[0].deployments[0].api_version: Extra inputs are not permitted"),
        ([{"name": "m", "provider": "local", "api_style": "v1"}], "models[0].deployments[0].api_style"),
        ([{"name": "m", "deployments": [{"provider": "openai", "name": "x"}, {"provider": "openai", "name": "x"}]}],
         "deployment name 'x' is used twice"),
    ],
)
def test_fallbacks_stay_in_one_space_and_vendor_options_stay_in_their_deployment(
        models: list[dict[str, object]], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"models": models})
    assert fragment in str(exc.value)


def test_a_same_space_fallback_and_the_short_form_both_load() -> None:
    settings = parse_settings({"models": [
        deployments_model("a", fallbacks=["b"]), deployments_model("b", same_space_as="a"),
        {"name": "short", "provider": "openai", "api_base": "http://x/v1", "max_batch_size": 3},
    ]})
    short = settings.models[2].deployments[0]
    assert (short.name, short.api_base, short.max_batch_size) == ("short/openai", "http://x/v1", 3)


def test_check_config_refuses_a_cross_space_fallback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n"
                      "  - {name: a, dimensions: 8, provider: openai, fallbacks: [b]}\n"
                      "  - {name: b, dimensions: 8, provider: openai}\n")
    result = run_cli("check-config", str(config))
    assert result.returncode == 1
    assert "models[0].fallbacks[0]: 'b' is another embedding space" in result.stderr
