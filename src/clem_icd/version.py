"""The installed version of CLEM-ICD; a module of its own, at the bottom of the layers, so that
model cards, datasets and outputs can record it without importing the package's public API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clem-icd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
