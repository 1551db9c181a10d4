"""Federated LoRA fine-tuning of causal language models on the fedpress engine.

Shared pieces (also used by ``fedpress.moe``): :mod:`.models` loads causal LMs offline (the
embedded SmolLM2 GGUF or any local Hugging Face directory) and builds tiny ones for tests;
:mod:`.tasks` generates reasoning-gym items, builds chat prompts and scores answers.
"""
