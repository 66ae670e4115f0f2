"""CLEM-ICD: automated ICD-10 coding of clinical notes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clem-icd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"


def __getattr__(name: str):
    # `from clem_icd import ICDCoder` without importing torch for every CLI call.
    if name in ("ICDCoder", "ICDCoderConfig"):
        import clem_icd.model as model

        return getattr(model, name)
    raise AttributeError(name)
