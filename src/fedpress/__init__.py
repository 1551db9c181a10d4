"""fedpress: communication-efficient federated learning with error-bounded lossy compression."""

__version__ = "0.1.0"
