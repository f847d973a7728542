"""hpcsur: learn macroscopic dynamics of large microscopic systems from partial force computations."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("hpcsur")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"
