"""Strict experiment config: unknown keys and bad values named by key path, overrides, files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpress.config import ConfigError, ExperimentConfig, apply_overrides, dump_config, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.strategy.name == "fedavg" and cfg.codec.name == "none" and cfg.run.rounds == 10


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_ready_configs_load_and_roundtrip(path):
    cfg = load_config(path)
    again = load_config(__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg


def test_all_ready_configs_exist():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"fedavg_mnist.yaml", "fedasync_mnist.yaml", "fedbuff_mnist.yaml", "fedfa_mnist.yaml",
            "quick_digits.yaml"} <= names
    assert {load_config(CONFIGS / f"{s}_mnist.yaml").strategy.name for s in
            ("fedavg", "fedasync", "fedbuff", "fedfa")} == {"fedavg", "fedasync", "fedbuff", "fedfa"}


def test_unknown_key_is_rejected_with_its_path_and_the_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config({"strategy": {"nme": "fedavg"}})
    msg = str(e.value)
    assert "strategy.nme: unknown key" in msg and "allowed:" in msg and "eta_g" in msg
    with pytest.raises(ConfigError, match=r"clients\.network\.tiers\.0\.upp_mbps: unknown key"):
        load_config({"clients": {"network": {"tiers": [{"upp_mbps": 3}]}}})
    with pytest.raises(ConfigError, match="bogus: unknown key"):
        load_config({"bogus": {}})


def test_bad_types_and_values_are_named():
    with pytest.raises(ConfigError, match=r"train\.lr: .*greater than 0.*got -1"):
        load_config({"train": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"data\.clients: .*integer.*got 'many'"):
        load_config({"data": {"clients": "many"}})
    with pytest.raises(ConfigError, match=r"strategy\.name: unknown strategy 'fedprox'"):
        load_config({"strategy": {"name": "fedprox"}})
    with pytest.raises(ConfigError, match=r"strategy\.staleness\.fn: unknown staleness"):
        load_config({"strategy": {"staleness": {"fn": "linear"}}})
    with pytest.raises(ConfigError, match="data.partition"):
        load_config({"data": {"partition": "random"}})
    with pytest.raises(ConfigError, match="max_in_flight=20 exceeds data.clients=10"):
        load_config({"data": {"clients": 10}, "strategy": {"max_in_flight": 20}})
    with pytest.raises(ConfigError, match="set at least one of"):
        load_config({"run": {"rounds": None}})
    with pytest.raises(ConfigError, match="trace"):
        load_config({"clients": {"compute": {"dist": "trace"}}})


def test_overrides_apply_dotted_keys_with_yaml_values():
    cfg = load_config(
        CONFIGS / "quick_digits.yaml",
        ["strategy.name=fedbuff", "codec.eb=0.01", "codec.name=grad", "run.max_updates=null",
         "run.rounds=3", "clients.network.tiers=[{up_mbps: 1}, {up_mbps: 100}]",
         "codec.downlink={name: lossless}", "strategy.staleness.fn=hinge"],
    )
    assert cfg.strategy.name == "fedbuff" and cfg.codec.eb == 0.01 and cfg.codec.name == "grad"
    assert cfg.run.max_updates is None and cfg.run.rounds == 3
    assert [t.up_mbps for t in cfg.clients.network.tiers] == [1, 100]
    assert cfg.codec.downlink is not None and cfg.codec.downlink.name == "lossless"
    assert cfg.strategy.staleness.fn == "hinge"


def test_override_errors():
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["strategy.name"])
    with pytest.raises(ConfigError, match="strategy.nmae: unknown key"):
        load_config(None, ["strategy.nmae=fedavg"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"strategy": {"name": "x"}}, ["strategy.name.inner=3"])
    with pytest.raises(ConfigError, match="empty key"):
        load_config(None, ["strategy..name=1"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {dataset: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_source_is_not_mutated():
    src = {"strategy": {"name": "fedavg"}}
    load_config(src, ["strategy.name=fedfa"])
    assert src == {"strategy": {"name": "fedavg"}}
