"""The federated engine: one server loop whose rules (strategies) give FedAvg, FedAsync, FedBuff
and FedFa, local client training, client profiles and the experiment entry point.

Submodules are imported on use; this package keeps its import light so that transports and
tools can import ``fedpress.fl.types`` without pulling torch in.
"""

from .types import GlobalState, Tensors, Update, to_pseudo_gradient

__all__ = ["GlobalState", "Tensors", "Update", "to_pseudo_gradient"]
