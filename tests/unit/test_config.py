import pytest

from gateway.cli import default_config
from gateway.config import ConfigError, load_config, parse_config


def minimal(**overrides):
    data = {
        "pools": {"gpu": {"url": "http://127.0.0.1:8080"}, "cpu": {"url": "http://127.0.0.1:8090"}},
        "tiers": {"premium": {"pools": ["gpu", "cpu"]}, "standard": {"pools": ["cpu"]}},
    }
    data.update(overrides)
    return data


def test_bundled_local_stack_config_is_valid():
    config = load_config(default_config())
    assert config.default_tier == "standard"
    assert config.tiers["premium"].pools == ["gpu", "cpu"] and not config.tiers["premium"].sheddable
    assert config.tiers["batch"].pools == ["cpu"]
    assert config.pools["cpu"].local.variant == "int8"
    assert config.pools["gpu"].local.variant == "gpu"


def test_defaults_apply():
    config = parse_config(minimal())
    assert config.tier_header == "X-SLA-Tier"
    assert config.max_body_bytes == 8 * 1024 * 1024
    assert config.pools["gpu"].url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"default_tier": "gold"}, "default_tier 'gold' is not one of the tiers ['premium', 'standard']"),
        ({"tiers": {"standard": {"pools": ["tpu"]}}}, "tier 'standard' names pool 'tpu'"),
        ({"tiers": {"standard": {"pools": ["cpu", "cpu"]}}}, "lists a pool twice"),
        ({"tiers": {"standard": {"pools": []}}}, "tiers.standard.pools"),
        ({"pools": {"cpu": {"url": "ftp://x"}}}, "pools.cpu.url"),
        ({"port": 70000}, "port"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"models": ["../etc"]}, "model name '../etc'"),
        ({"tiers": {"Gold": {"pools": ["cpu"]}}}, "tier name 'Gold' must be lower case"),
    ],
)
def test_bad_config_names_the_problem(overrides, expected):
    with pytest.raises(ConfigError) as raised:
        parse_config(minimal(**overrides), "test.yaml")
    assert "test.yaml" in str(raised.value)
    assert expected in str(raised.value)


def test_load_reports_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)
