import pytest

from gateway.cli import default_config
from gateway.config import ConfigError, load_config, parse_config


def minimal(**overrides):
    data = {
        "models": {"resnet18": {"profile": "image-classifier"}},
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
        ({"models": {"../etc": {"profile": "json"}}}, "name '../etc' must match"),
        ({"models": {}}, "models: Dictionary should have at least 1 item"),
        ({"models": {"m": {"profile": "yaml"}}}, "does not match any of the expected tags"),
        ({"models": {"m": {"profile": "json", "json_schema": {"type": "nonsense"}}}}, "json_schema is not a valid JSON Schema"),
        ({"models": {"m": {"profile": "passthrough", "mar": "../x.mar"}}}, "mar is a file name in the model store"),
        ({"models": {"m": {"profile": "passthrough", "content_types": ["Image/JPEG"]}}}, "is not a lower-case media type"),
        (
            {"models": {"m": {"profile": "tensor", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}] * 2,
                              "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}}},
            "inputs name a tensor twice",
        ),
        (
            {"models": {"m": {"profile": "tensor", "inputs": [{"name": "x", "datatype": "FP33", "shape": [-1]}],
                              "outputs": [{"name": "y", "datatype": "FP32", "shape": [0]}]}}},
            "models.m.tensor.inputs.0.datatype",
        ),
        ({"pools": {"gpu": {"url": "http://g", "models": ["bert"]}, "cpu": {"url": "http://c"}}}, "pool 'gpu' serves unknown models ['bert']"),
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


def test_a_model_left_without_a_pool_in_a_tier_is_refused_naming_both():
    data = minimal(
        models={"resnet18": {"profile": "image-classifier"}, "digits": {"profile": "json"}},
        pools={"gpu": {"url": "http://g"}, "cpu": {"url": "http://c", "models": ["resnet18"]}},
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "test.yaml")
    message = str(raised.value)
    assert "model 'digits' has no pool in tier 'standard'" in message
    assert "pools serving it: ['gpu']" in message


def test_a_tier_routes_each_model_to_the_pools_serving_it():
    config = parse_config(minimal(
        models={"resnet18": {"profile": "image-classifier"}, "stock": {"profile": "passthrough"}},
        pools={"gpu": {"url": "http://g", "models": ["resnet18"]}, "cpu": {"url": "http://c"}},
        tiers={"premium": {"pools": ["gpu", "cpu"], "spillover": ["gpu"]}, "standard": {"pools": ["cpu"]}},
    ))
    assert config.tier_pools("premium", "resnet18") == ["gpu", "cpu"]
    assert config.tier_pools("premium", "stock") == ["cpu"]
    assert config.tier_spillover("premium", "stock") == []
    assert config.pool_models("cpu") == ["resnet18", "stock"]
    assert config.body_limit("stock") == config.max_body_bytes
