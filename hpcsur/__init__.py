"""hpcsur: learn macroscopic dynamics of large microscopic systems from partial force computations."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("hpcsur")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"


def __getattr__(name):
    """``from hpcsur import Surrogate``: the exported-model API, imported on first use (torch is heavy)."""
    if name == "Surrogate":
        from hpcsur.learn.surrogate import Surrogate

        return Surrogate
    raise AttributeError(f"module 'hpcsur' has no attribute {name!r}")
