"""CLEM-ICD: automated ICD-10 coding of clinical notes."""

from clem_icd.version import __version__

__all__ = ["ICDCoder", "ICDCoderConfig", "TfidfCoder", "__version__", "load_model"]


def __getattr__(name: str):
    # `from clem_icd import ICDCoder` without importing torch for every CLI call.
    if name in ("ICDCoder", "ICDCoderConfig"):
        import clem_icd.model as model

        return getattr(model, name)
    if name == "TfidfCoder":
        from clem_icd.baselines.tfidf import TfidfCoder

        return TfidfCoder
    if name == "load_model":  # either kind of model folder
        from clem_icd.loading import load_model

        return load_model
    raise AttributeError(name)
