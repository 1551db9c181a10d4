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


#: the LM and MoE configs have their own schemas (fedpress.llm.config, fedpress.moe.config)
EXPERIMENT_CONFIGS = sorted(
    p for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("llm_", "moe_"))
)


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_ready_configs_load_and_roundtrip(path):
    cfg = load_config(path)
    again = load_config(__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("llm_*.yaml")), ids=lambda p: p.name)
def test_ready_llm_configs_load(path):
    from fedpress.llm.config import load_llm_config

    assert load_llm_config(path) is not None


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("moe_*.yaml")), ids=lambda p: p.name)
def test_ready_moe_configs_load(path):
    from fedpress.moe.config import load_moe_config

    assert load_moe_config(path) is not None


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
    assert "strategy.nme: not a key of strategy 'fedavg'" in msg and "allowed:" in msg and "eta_g" in msg
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
    with pytest.raises(ConfigError, match=r"strategy\.staleness\.fn: .*'polynomial'.*got 'linear'"):
        load_config({"strategy": {"name": "fedbuff", "staleness": {"fn": "linear"}}})
    with pytest.raises(ConfigError, match="data.partition"):
        load_config({"data": {"partition": "random"}})
    with pytest.raises(ConfigError, match="max_in_flight=20 exceeds data.clients=10"):
        load_config({"data": {"clients": 10}, "strategy": {"name": "fedbuff", "max_in_flight": 20}})
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
    with pytest.raises(ConfigError, match="strategy.nmae: not a key of strategy 'fedavg'"):
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


@pytest.mark.parametrize("name,key,value", [
    ("fedavg", "alpha", 0.1), ("fedavg", "K", 3), ("fedavg", "max_in_flight", 2),
    ("fedasync", "K", 3), ("fedasync", "eta_g", 1.0), ("fedbuff", "alpha", 0.5),
    ("fedbuff", "clients_per_round", 2), ("fedfa", "timeout", 1.0), ("fedasync", "server_opt", {}),
])
def test_keys_of_another_strategy_are_refused(name, key, value):
    with pytest.raises(ConfigError, match=rf"strategy\.{key}: not a key of strategy '{name}'"):
        load_config({"strategy": {"name": name, key: value}})


def test_each_strategy_takes_its_own_keys():
    ok = {"fedavg": {"clients_per_round": 3, "timeout": 1.0, "eta_g": 0.5},
          "fedasync": {"alpha": 0.3, "staleness": {"fn": "hinge"}, "max_in_flight": 4},
          "fedbuff": {"K": 3, "eta_g": 0.5, "max_in_flight": 4, "server_opt": {"name": "yogi"}},
          "fedfa": {"K": 3, "variant": "delta", "redispatch": "random", "staleness_weighting": True}}
    for name, keys in ok.items():
        cfg = load_config({"strategy": {"name": name, **keys}})
        for k, v in keys.items():
            got = getattr(cfg.strategy, k)
            assert (got.model_dump(exclude_unset=True) if hasattr(got, "model_dump") else got) == v


def test_codec_names_and_parameters_are_checked_against_the_registry():
    from fedpress.codec.base import available_codecs

    with pytest.raises(ConfigError) as e:
        load_config(None, ["codec.name=gradd"])
    msg = str(e.value)
    assert "unknown codec 'gradd'" in msg and all(n in msg for n in available_codecs())
    with pytest.raises(ConfigError, match="codec.downlink: unknown codec 'sz4'"):
        load_config(None, ["codec.downlink={name: sz4}"])
    for name in ("none", "raw", "lossless", "grad", "sz3"):
        assert load_config(None, [f"codec.name={name}"]).codec.name == name


def test_each_server_optimizer_has_its_own_defaults():
    from fedpress.fl.server_opt import DEFAULTS, make_server_optimizer
    from fedpress.fl.strategies import build_strategy

    expected = {"sgd": 1.0, "momentum": 0.1, "adam": 1e-2, "yogi": 1e-2, "adagrad": 1e-2}
    for name, eta in expected.items():
        cfg = load_config({"strategy": {"name": "fedavg", "server_opt": {"name": name}}})
        opt = build_strategy(cfg.strategy, 4).opt
        assert opt.eta_g == eta and type(opt).__name__.lower().endswith(name if name != "sgd" else "sgd")
        assert DEFAULTS[name]["eta_g"] == eta
    adam = make_server_optimizer("adam")
    assert (adam.b1, adam.b2, adam.eps) == (0.9, 0.99, 1e-3)  # Reddi et al. 2021
    explicit = load_config({"strategy": {"name": "fedbuff", "eta_g": 0.3,
                                         "server_opt": {"name": "adam", "eps": 1e-4}}})
    opt = build_strategy(explicit.strategy, 4).opt
    assert opt.eta_g == 0.3 and opt.eps == 1e-4 and opt.b2 == 0.99


def test_config_lists_match_the_engine_registries():
    from fedpress.config import SERVER_OPTS, STALENESS_FNS, STRATEGIES
    from fedpress.fl.server_opt import available_server_optimizers
    from fedpress.fl.staleness import available_staleness
    from fedpress.fl.strategies import available_strategies

    assert sorted(STRATEGIES) == available_strategies()
    assert sorted(STALENESS_FNS) == available_staleness()
    assert sorted(SERVER_OPTS) == available_server_optimizers()


def test_dataset_model_and_stop_are_checked_up_front():
    with pytest.raises(ConfigError, match="data.dataset: unknown dataset 'mnits'"):
        load_config(None, ["data.dataset=mnits"])
    with pytest.raises(ConfigError, match="model.name: unknown model 'cnnn'"):
        load_config(None, ["model.name=cnnn"])
    with pytest.raises(ConfigError, match="stop_at_target needs run.target_accuracy"):
        load_config(None, ["run.stop_at_target=true"])


def test_a_refused_config_leaves_no_run_directory(tmp_path):
    from fedpress.experiment.run import main_run

    for bad in (["codec.name=gradd"], ["strategy.alpha=0.1"], ["model.name=cnnn"]):
        rc = main_run([str(CONFIGS / "quick_digits.yaml"), *bad, f"run.out_dir={tmp_path}", "--quiet"])
        assert rc == 2
    assert list(tmp_path.iterdir()) == []


def test_config_does_not_import_the_engine():
    import subprocess
    import sys

    code = ("import sys, fedpress.config as c; c.load_config(None, ['strategy.name=fedbuff']); "
            "print(sorted(m for m in sys.modules if m.startswith('fedpress.fl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
