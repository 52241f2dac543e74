"""tunelab: fine-tune language models from one YAML file and measure whether it helped."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tunelab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

__all__ = ["__version__"]
