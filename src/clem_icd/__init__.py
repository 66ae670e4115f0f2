"""CLEM-ICD: automated ICD-10 coding of clinical notes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clem-icd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
