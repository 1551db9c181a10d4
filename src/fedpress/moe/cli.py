"""``fedpress moe build|generate|bench|study|eval``: each takes ``--config FILE`` and ``key=value``.

Every command checks its input first (model directory, codecs, budget) and fails with one line;
results go to ``out`` (JSON + PNG plots) with the exact command, git commit and machine info.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .config import MoeConfig, load_moe_config

COMMANDS = ("build", "generate", "bench", "study", "eval")


def _log(msg: str) -> None:
    print(f"[moe {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def default_moe_dir(cfg: MoeConfig) -> Path:
    from fedpress.llm.models import cache_root

    from .build import BuildRecipe

    recipe = BuildRecipe(**cfg.build.model_dump())
    k = recipe.route_k or recipe.top_k
    return cache_root() / f"smollm2-135m-moe-e{recipe.experts}k{k}-{recipe.key()}"


def model_dir(cfg: MoeConfig) -> Path:
    if cfg.model:
        return Path(cfg.model)
    d = default_moe_dir(cfg)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"the default MoE is not built yet ({d}); run `fedpress moe build` first")
    return d


def load_model(path: Path, threads: int) -> tuple[Any, Any]:
    import torch

    from fedpress.llm.models import load_causal_lm

    torch.set_num_threads(threads)
    model, tok = load_causal_lm(path)
    model.config._experts_implementation = "eager"  # the arithmetic the offloaded runtime repeats
    return model, tok


def evaluator(tok: Any, cfg: MoeConfig):
    """``evaluate(model)`` on the configured tasks: the scores of the first task, per task too."""
    from fedpress.llm.tasks import evaluate_task, make_items

    sets = []
    for task in cfg.eval.tasks:
        items = make_items(task, cfg.eval.items + 1, seed=cfg.eval.seed)
        one = items[0] if cfg.eval.one_shot else None
        sets.append((task, items[1:], one))

    def evaluate(model: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for task, items, one in sets:
            out[task] = evaluate_task(model, tok, items, one, cfg.eval.max_new_tokens, cfg.eval.batch)
        first = out[cfg.eval.tasks[0]]
        return {"acc_format": first["acc_format"], "acc_content": first["acc_content"], "per_task": out}

    return evaluate


def _save(cfg: MoeConfig, name: str, data: dict[str, Any]) -> Path:
    from fedpress.bench.machine import machine_info

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine_info(), "config": cfg.model_dump(mode="json"), **data}
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def cmd_build(cfg: MoeConfig, force: bool) -> int:
    import torch

    from fedpress.llm.models import load_causal_lm

    from .build import BuildRecipe, build_moe

    target = default_moe_dir(cfg)
    if (target / "config.json").is_file() and not force:
        _log(f"already built: {target} (use --force to rebuild)")
        return 0
    torch.set_num_threads(cfg.threads)
    recipe = BuildRecipe(**cfg.build.model_dump())
    dense, tok = load_causal_lm(cfg.dense)
    moe, report = build_moe(dense, tok, recipe, progress=_log)
    tmp = target.with_name(target.name + ".tmp")
    moe.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    evaluate = evaluator(tok, cfg)
    _log("scoring the dense model and the MoE ...")
    report["dense"] = evaluate(dense)
    moe.config._experts_implementation = "eager"
    report["moe"] = evaluate(moe)
    (tmp / "build_report.json").write_text(json.dumps(report, indent=1))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    path = _save(cfg, "build", {"model_dir": str(target), **report})
    _log(f"built {target}: dense format {report['dense']['acc_format']:.2f} / content "
         f"{report['dense']['acc_content']:.2f}; MoE {report['moe']['acc_format']:.2f} / "
         f"{report['moe']['acc_content']:.2f}; report {path}")
    return 0


def _preflight(cfg: MoeConfig) -> tuple[Path, dict[str, Any]]:
    from .checks import preflight

    path = model_dir(cfg)
    return path, preflight(path, cfg.offload.plan(), cfg.offload.budget)


def _device(cfg: MoeConfig) -> str:
    import torch

    if cfg.offload.device != "auto":
        return cfg.offload.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_generate(cfg: MoeConfig) -> int:
    from .runtime import measure_generation, offload

    path, info = _preflight(cfg)
    model, tok = load_model(path, cfg.threads)
    o = cfg.offload
    store_dir = (o.store_dir or str(Path(cfg.out) / "store")) if o.store == "disk" else None
    rt = offload(model, o.plan(), o.budget, o.policy, o.prefetch, store_dir, _device(cfg))
    _log(f"experts stored: {rt.store.raw_bytes / 1e6:.1f} MB -> {rt.store.stored_bytes / 1e6:.1f} MB; "
         f"cache {rt.cache.slots} of {info['total_experts']} experts")
    text = tok.apply_chat_template([{"role": "user", "content": cfg.generate.prompt}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    m = measure_generation(model, [ids], cfg.generate.max_new_tokens, rt)
    reply = tok.decode(m.pop("outputs")[0], skip_special_tokens=True)
    rt.close()
    print(reply)
    path = _save(cfg, "generate", {"reply": reply, **m})
    _log(f"{m['tokens_per_s']:.2f} tokens/s, {m['bytes_per_token'] / 1e6:.2f} MB moved per token, "
         f"hit rate {m['hit_rate']:.2f}; {path}")
    return 0


def cmd_eval(cfg: MoeConfig) -> int:
    path = model_dir(cfg)
    model, tok = load_model(path, cfg.threads)
    res = evaluator(tok, cfg)(model)
    out = _save(cfg, "eval", {"model_dir": str(path), **res})
    _log(f"format {res['acc_format']:.2f} content {res['acc_content']:.2f}; {out}")
    return 0


def cmd_bench(cfg: MoeConfig) -> int:
    from fedpress.llm.tasks import build_prompt, make_items

    from .bench import bar_check, codec_throughput, run_bench
    from .checks import check_codec_can_hold, preflight
    from .layout import find_moe_layers
    from .plots import plot_bench
    from .weight_codec import CodecSpec

    path = model_dir(cfg)
    for c in cfg.bench.codecs:
        check_codec_can_hold(CodecSpec.parse(c))
    for b in cfg.bench.budgets:
        preflight(path, {"default": "raw"}, b)
    model, tok = load_model(path, cfg.threads)
    items = make_items(cfg.eval.tasks[0], cfg.bench.prompts + 1, seed=cfg.eval.seed + 1)
    prompts = [tok(build_prompt(tok, it, items[0]), return_tensors="pt", add_special_tokens=False)["input_ids"]
               for it in items[1:]]
    evaluate = evaluator(tok, cfg) if cfg.bench.accuracy_items else None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedpress-moe-stores-") as stores:  # memory-mapped stores
        res = run_bench(model, prompts, cfg.bench, Path(stores), evaluate, progress=_log)
    res["decode_throughput"] = codec_throughput(find_moe_layers(model), cfg.bench.throughput_codecs)
    res["bar_25pct"] = bar_check(res, "25%")
    out = _save(cfg, "bench", res)
    plots = plot_bench(res, Path(cfg.out))
    _log(f"wrote {out} and {', '.join(map(str, plots))}")
    return 0


def cmd_study(cfg: MoeConfig, max_minutes: float | None) -> int:
    from .plots import plot_study
    from .study import run_study

    path = model_dir(cfg)
    model, tok = load_model(path, cfg.threads)
    from fedpress.bench.machine import machine_info

    out_json = Path(cfg.out) / "study.json"
    meta = {"machine": machine_info(), "config": cfg.model_dump(mode="json"), "model_dir": str(path)}
    res = run_study(model, tok, cfg.study, evaluator(tok, cfg), out_json, meta, max_minutes, _log)
    plots = plot_study(res, Path(cfg.out))
    _log(f"wrote {out_json} and {', '.join(map(str, plots))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedpress moe", description=__doc__)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--config", help="YAML config (configs/moe_*.yaml)")
    p.add_argument("--force", action="store_true", help="build: rebuild even if cached")
    p.add_argument("--max-minutes", type=float, default=None, help="study: stop after this long")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    cfg = load_moe_config(args.config, args.overrides)
    if args.command == "build":
        return cmd_build(cfg, args.force)
    if args.command == "generate":
        return cmd_generate(cfg)
    if args.command == "bench":
        return cmd_bench(cfg)
    if args.command == "eval":
        return cmd_eval(cfg)
    return cmd_study(cfg, args.max_minutes)
