"""Running the server loop for real: ``fedpress server``, ``fedpress client``, ``fedpress launch``,
atomic checkpoints (``checkpoint``), and the workloads they run (``workload``: CNN configs and
federated LoRA configs, told apart by the config's shape). See docs/deployment.md."""
