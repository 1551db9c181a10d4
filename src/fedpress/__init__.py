"""fedpress: communication-efficient federated learning with error-bounded lossy compression."""

from importlib.metadata import PackageNotFoundError, version

try:  # one source of truth: the version pyproject.toml gave the installed package
    __version__ = version("fedpress")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
