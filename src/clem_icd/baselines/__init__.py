"""Classical baselines to compare the neural coder against."""

from clem_icd.baselines.tfidf import TfidfCoder

__all__ = ["TfidfCoder", "fit_tfidf_baseline"]


def __getattr__(name: str):
    # The fitting helper reads prepared datasets (polars, pyarrow): not needed to load a model.
    if name == "fit_tfidf_baseline":
        from clem_icd.baselines.fit import fit_tfidf_baseline

        return fit_tfidf_baseline
    raise AttributeError(name)
