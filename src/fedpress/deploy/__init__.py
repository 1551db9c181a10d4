"""Running the server loop for real: ``fedpress server``, ``fedpress client``, ``fedpress launch``,
atomic checkpoints (``checkpoint``). See docs/deployment.md."""
