"""Derive a mixture-of-experts model from a dense Llama-style model (the default: SmolLM2-135M).

No MoE with pretrained weights ships in any package, so the default MoE is carved out of the
pretrained dense model ("MoEfication"): each MLP's intermediate neurons are split into a shared
expert (the neurons that matter on most tokens) and ``E`` routed experts (balanced k-means on
the neurons' co-activation profiles over shipped text), and a router per layer is fitted to pick
the ``k`` experts whose output is largest on the token (least squares on hidden states, then a
few hundred steps of logistic training on the true top-k sets).

It is written as a stock ``transformers`` Qwen2-MoE (attention = Llama's with ``qkv_bias=False``),
so it loads with ``AutoModelForCausalLM`` and the runtime treats it like any HF MoE. Qwen2-MoE
weights the selected experts with their softmax probabilities (``norm_topk_prob=False``); the
router's logits are scaled to a tiny spread (std ``logit_std``), so every probability is
``1/E`` within about ``logit_std`` and every routed expert's ``down_proj`` is multiplied by ``E``:
the selected experts are summed with weight ~1, as in the dense MLP, while the ordering (the
choice) is the fitted one. The shared expert's gate is zero (sigmoid = 1/2) and its ``down_proj``
doubled. With ``k = E`` the MoE reproduces the dense model (tested).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class BuildRecipe:
    """How the dense MLPs become experts (the cache key of the built model)."""

    experts: int = 16
    top_k: int = 4  # the router is fitted to find each token's top_k experts
    route_k: int | None = 8  # experts used per token at inference (None: top_k)
    shared: int = 384
    logit_std: float = 0.01
    calib_tokens: int = 2500
    router_steps: int = 100
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def calibration_texts(tok: Any, max_tokens: int) -> list[str]:
    """Shipped text: worked reasoning-gym items (chat format) and gensim's Lee news corpus."""
    from fedpress.llm.tasks import TASKS, build_prompt, make_items, worked_answer

    texts: list[str] = []
    for i, task in enumerate(TASKS):
        items = make_items(task, 40, seed=1000 + i)  # seeds apart from the study's items
        for a, b in zip(items[::2], items[1::2], strict=False):
            texts.append(build_prompt(tok, b, a) + worked_answer(b) + (tok.eos_token or ""))
    texts += lee_background()
    out, total = [], 0
    for t in texts:
        n = len(tok(t, add_special_tokens=False)["input_ids"])
        out.append(t)
        total += min(n, 256)
        if total >= max_tokens:
            break
    return out


def lee_background() -> list[str]:
    """The 299 news articles of gensim's test corpus, read as a file (gensim is not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / "lee_background.cor"
    return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]


@torch.no_grad()
def collect_mlp_inputs(model: Any, tok: Any, texts: Sequence[str], max_len: int = 256) -> list[torch.Tensor]:
    """The input of every layer's MLP (post-norm hidden states) on ``texts``: [tokens, hidden]."""
    layers = model.model.layers
    store: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda m, a, i=i: store[i].append(a[0].reshape(-1, a[0].shape[-1])))
        for i, layer in enumerate(layers)
    ]
    try:
        for t in texts:
            ids = tok(t, return_tensors="pt", add_special_tokens=False, truncation=True, max_length=max_len)
            model.model(**ids)  # the MLP inputs only: no need for the LM head
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(s) for s in store]


def balanced_kmeans(feats: torch.Tensor, k: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """Cluster rows of ``feats`` (cosine) into ``k`` groups of equal size; returns labels."""
    n = feats.shape[0]
    cap = n // k
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(feats, dim=1)
    cent = x[torch.randperm(n, generator=g)[:k]].clone()
    labels = [0] * n
    for _ in range(iters):
        sim = x @ cent.T  # [n, k]
        order = torch.argsort(sim.reshape(-1), descending=True).tolist()
        labels = [-1] * n
        fill = [0] * k
        left = n
        for flat in order:  # greedy: best (neuron, cluster) pairs first, clusters capped at n/k
            i, c = divmod(flat, k)
            if labels[i] >= 0 or fill[c] >= cap:
                continue
            labels[i] = c
            fill[c] += 1
            left -= 1
            if left == 0:
                break
        lab = torch.tensor(labels)
        cent = F.normalize(torch.stack([x[lab == c].mean(0) for c in range(k)]), dim=1)
    labels = torch.tensor(labels)
    return labels


@dataclass
class LayerSplit:
    shared: torch.Tensor  # neuron indices of the shared expert
    experts: list[torch.Tensor]  # neuron indices of each routed expert
    router: torch.Tensor  # [E, hidden] (before logit scaling)
    recall: float  # share of the true top-k experts the router picks (calibration tokens)


def split_layer(mlp: Any, x: torch.Tensor, recipe: BuildRecipe) -> LayerSplit:
    """Choose the shared neurons, cluster the rest into experts, fit the router."""
    with torch.no_grad():
        act = mlp.act_fn(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight)
        wd = mlp.down_proj.weight  # [hidden, inter]
        importance = act.abs() * wd.norm(dim=0)  # |a_j| * ||W_down[:, j]||
        inter = act.shape[1]
        shared = torch.argsort(importance.mean(0), descending=True)[: recipe.shared]
        mask = torch.ones(inter, dtype=torch.bool)
        mask[shared] = False
        routed = torch.nonzero(mask).squeeze(1)
        labels = balanced_kmeans(importance[:, routed].T, recipe.experts, seed=recipe.seed)
        experts = [routed[labels == c] for c in range(recipe.experts)]
        contrib = torch.stack(
            [(act[:, idx] @ wd[:, idx].T).norm(dim=1) for idx in experts], dim=1
        )  # [tokens, E]: size of each expert's output on each token
        target = torch.zeros_like(contrib)
        target.scatter_(1, contrib.topk(recipe.top_k, dim=1).indices, 1.0)
        # least squares from hidden states to contributions, then logistic steps on the top-k sets
        ridge = 1e-3 * x.pow(2).mean() * torch.eye(x.shape[1])
        w = torch.linalg.solve(x.T @ x + ridge * x.shape[0], x.T @ (contrib - contrib.mean(1, keepdim=True)))
    w = w.T.contiguous().requires_grad_(True)  # [E, hidden]
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(recipe.router_steps):
        opt.zero_grad()
        logits = F.linear(x, w)
        loss = F.binary_cross_entropy_with_logits(logits - logits.mean(1, keepdim=True), target)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pick = torch.zeros_like(target)
        pick.scatter_(1, F.linear(x, w).topk(recipe.top_k, dim=1).indices, 1.0)
        recall = float((pick * target).sum() / target.sum())
    return LayerSplit(shared, experts, w.detach(), recall)


def moe_config(dense_cfg: Any, recipe: BuildRecipe) -> Any:
    """A Qwen2-MoE config with the dense model's attention, norms, rope and vocabulary."""
    from transformers import Qwen2MoeConfig

    inter = dense_cfg.intermediate_size
    return Qwen2MoeConfig(
        vocab_size=dense_cfg.vocab_size, hidden_size=dense_cfg.hidden_size,
        intermediate_size=inter, num_hidden_layers=dense_cfg.num_hidden_layers,
        num_attention_heads=dense_cfg.num_attention_heads,
        num_key_value_heads=dense_cfg.num_key_value_heads, hidden_act=dense_cfg.hidden_act,
        max_position_embeddings=dense_cfg.max_position_embeddings, rms_norm_eps=dense_cfg.rms_norm_eps,
        tie_word_embeddings=dense_cfg.tie_word_embeddings, rope_parameters=dense_cfg.rope_parameters,
        moe_intermediate_size=(inter - recipe.shared) // recipe.experts,
        shared_expert_intermediate_size=recipe.shared, num_experts=recipe.experts,
        num_experts_per_tok=recipe.route_k or recipe.top_k, norm_topk_prob=False, qkv_bias=False,
        decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
        bos_token_id=dense_cfg.bos_token_id, eos_token_id=dense_cfg.eos_token_id,
        pad_token_id=dense_cfg.pad_token_id, experts_implementation="eager",
    )


@torch.no_grad()
def assemble(dense: Any, splits: list[LayerSplit], recipe: BuildRecipe) -> Any:
    """Copy the dense weights into a Qwen2-MoE built from ``moe_config``."""
    from transformers import Qwen2MoeForCausalLM

    if (recipe.route_k or recipe.top_k) > recipe.experts or recipe.top_k > recipe.experts:
        raise ValueError(f"top_k/route_k cannot exceed the {recipe.experts} experts")
    if (dense.config.intermediate_size - recipe.shared) % recipe.experts:
        raise ValueError("intermediate_size - shared must divide into the experts evenly")
    cfg = moe_config(dense.config, recipe)
    moe = Qwen2MoeForCausalLM(cfg).eval()
    sd = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    missing, _ = moe.load_state_dict(sd, strict=False)
    for dl, ml, sp in zip(dense.model.layers, moe.model.layers, splits, strict=True):
        g, u, d = dl.mlp.gate_proj.weight, dl.mlp.up_proj.weight, dl.mlp.down_proj.weight
        blk = ml.mlp
        blk.shared_expert.gate_proj.weight.copy_(g[sp.shared])
        blk.shared_expert.up_proj.weight.copy_(u[sp.shared])
        blk.shared_expert.down_proj.weight.copy_(2.0 * d[:, sp.shared])
        blk.shared_expert_gate.weight.zero_()
        for e, idx in enumerate(sp.experts):
            blk.experts.gate_up_proj[e].copy_(torch.cat([g[idx], u[idx]], dim=0))
            blk.experts.down_proj[e].copy_(recipe.experts * d[:, idx])
        blk.gate.weight.copy_(sp.router)
    expected = {k for k in missing if ".mlp." in k}
    if set(missing) - expected - {"lm_head.weight"}:
        raise RuntimeError(f"weights not copied: {sorted(set(missing) - expected)[:5]}")
    moe.tie_weights()
    return moe


@torch.no_grad()
def scale_routers(moe: Any, xs: list[torch.Tensor], logit_std: float) -> None:
    """Shrink each router so its logits have std ``logit_std`` (probabilities ~ 1/E, order kept)."""
    for layer, x in zip(moe.model.layers, xs, strict=True):
        w = layer.mlp.gate.weight
        std = F.linear(x, w).std().clamp_min(1e-12)
        w.mul_(logit_std / std)


def build_moe(dense: Any, tok: Any, recipe: BuildRecipe, progress: Callable[[str], None] = print,
              texts: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The MoE model and a report (router recall per layer, timings); ``texts`` default: shipped."""
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    texts = list(texts) if texts is not None else calibration_texts(tok, recipe.calib_tokens)
    xs = collect_mlp_inputs(dense, tok, texts)
    progress(f"calibration: {len(texts)} texts, {xs[0].shape[0]} tokens per layer "
             f"({time.perf_counter() - t0:.0f} s)")
    splits = []
    for i, (layer, x) in enumerate(zip(dense.model.layers, xs, strict=True)):
        splits.append(split_layer(layer.mlp, x, recipe))
        progress(f"layer {i}: router top-{recipe.top_k} recall {splits[-1].recall:.2f}")
    moe = assemble(dense, splits, recipe)
    scale_routers(moe, xs, recipe.logit_std)
    report = {"recipe": asdict(recipe), "calibration_texts": len(texts),
              "calibration_tokens": int(xs[0].shape[0]),
              "router_recall": [s.recall for s in splits], "build_s": time.perf_counter() - t0}
    return moe, report
