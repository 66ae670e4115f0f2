"""TF-IDF + one-vs-rest logistic regression: the classical baseline for ICD coding.

Features: word 1-2 grams, lower-cased, sublinear tf (1 + log tf), idf, L2-normalised rows,
terms in at least `min_df` documents, the `max_features` most frequent kept.
Classifier: one L2-regularised logistic regression per code (liblinear), fitted in parallel
threads (liblinear releases the GIL, and threads share the feature matrix instead of copying it).
A code without a positive training document, or positive in all of them, has nothing to learn:
it gets a constant score (logit -20 or +20) instead of a model.

Scoring: `predict_proba` gives the probabilities; `predict` and `note_predictor` choose codes with
the same rule as the neural coder (clem_icd.choice.choose_codes) and return the same shapes as
`ICDCoder.predict` and `NotePredictor.predict` (no evidence, never truncated).

A saved model is a folder that is safe to load (no pickle):
    config.json         model_type "tfidf", codes, code_systems, descriptions, threshold,
                        hyperparameters, text_cleaning (applied to new notes), the writing
                        clem_icd_version, and (when fitted on a prepared dataset) its fingerprint
    vectorizer.json     the vocabulary (terms in feature order) and their idf values
    model.safetensors   weight (fitted codes x features, float32), bias (codes), fitted_index

The vocabulary is made of words and word pairs from the training notes (those in at least
`min_df` of them): a model trained on protected notes must be shared like those notes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from scipy.special import expit
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from clem_icd.atomic import atomic_folder, check_replaceable, write_json_atomic
from clem_icd.choice import PROBABILITY, choose_codes, code_entry
from clem_icd.data.text import TEXT_CLEANINGS, clean_texts
from clem_icd.errors import ClemError
from clem_icd.saved import check_keys, check_nested_keys, stamped
from clem_icd.typecheck import checked

MODEL_TYPE = "tfidf"
CONFIG_FILE, VECTORIZER_FILE, WEIGHTS_FILE = "config.json", "vectorizer.json", "model.safetensors"
# Every key of config.json (save_pretrained writes them; loading refuses any other, clem_icd.saved).
CONFIG_KEYS = ("model_type", "codes", "code_systems", "descriptions", "threshold", "hyperparameters",
               "n_features", "n_fitted_codes", "constant_logit", "dataset", "text_cleaning")
METRICS_FILE = "metrics.json"
# Logit of a code that was never (or always) positive in training: sigmoid(-20) ~ 2e-9.
CONSTANT_LOGIT = 20.0
# C = 100 (weak regularisation): rows are L2-normalised, so a single term has a small value and
# needs a large weight to move a logit, and most codes have only a few positive notes. On CodiEsp
# dev (2,921 codes) micro-F1 / mAP went 0.16 / 0.12 at C = 1, 0.23 / 0.17 at 10, 0.25 / 0.20 at
# 100, 0.25 / 0.21 at 1000; the synthetic corpus shows the same order.
# tol = 0.01: liblinear's own default for this solver is 0.1; 0.01 changes logits by < 0.01
# against 1e-4 and fits about twice as fast.
DEFAULT_CONFIG = {
    "C": 100.0,
    "max_features": 100_000,
    "min_df": 2,
    "ngram_range": [1, 2],
    "sublinear_tf": True,
    "lowercase": True,
    "max_iter": 100,
    "tol": 1e-2,
}
# The type of each option, checked by the one rule of recipe values (clem_icd.typecheck).
# max_features None: every term (scikit-learn's meaning).
OPTION_TYPES = {"C": float, "max_features": int | None, "min_df": int, "ngram_range": list[int],
                "sublinear_tf": bool, "lowercase": bool, "max_iter": int, "tol": float}
PREDICT_BATCH = 2048  # documents per matrix product: bounds memory at batch x codes floats


def _option_name(key: str) -> str:
    return f"TF-IDF option '{key}'"


def _merge_config(config: Mapping | None, name: Callable[[str], str] = _option_name) -> dict:
    """DEFAULT_CONFIG updated with `config`, each value type-checked; `name(key)` is how an
    error names the key (a recipe's 'model.C', a folder's field)."""
    merged = dict(DEFAULT_CONFIG)
    unknown = sorted(set(config or {}) - set(DEFAULT_CONFIG))
    if unknown:
        raise ClemError(f"{name(unknown[0])}: unknown TF-IDF option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(DEFAULT_CONFIG)}")
    merged.update({key: checked(name(key), OPTION_TYPES[key], value) for key, value in (config or {}).items()})
    merged["ngram_range"] = ngrams = list(merged["ngram_range"])  # not DEFAULT_CONFIG's own list
    if len(ngrams) != 2 or not 1 <= ngrams[0] <= ngrams[1]:
        raise ClemError(f"{name('ngram_range')}: got {merged['ngram_range']!r}, expected [lowest, highest] "
                        f"word n-gram sizes, 1 <= lowest <= highest")
    return merged


# Keys of a recipe's `model:` section that are not TF-IDF hyperparameters.
NOT_HYPERPARAMETERS = ("kind",)


def tfidf_options(options: Mapping | None, name: Callable[[str], str] = _option_name) -> dict:
    """The full TF-IDF hyperparameters for `options` as a recipe's `model:` section gives them:
    its `kind` is ignored, unknown keys are refused, values are type-checked (errors name a key
    as `name(key)` says), missing ones take their defaults."""
    return _merge_config({k: v for k, v in (options or {}).items() if k not in NOT_HYPERPARAMETERS}, name)


def _vectorizer(config: dict, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(
        lowercase=config["lowercase"], ngram_range=tuple(config["ngram_range"]),
        min_df=config["min_df"], max_features=config["max_features"],
        sublinear_tf=config["sublinear_tf"], vocabulary=vocabulary, dtype=np.float32,
    )


def _fit_code(x, positives: np.ndarray, config: dict) -> tuple[np.ndarray, float, bool]:
    """Weights, intercept and convergence of one code's logistic regression."""
    y = np.zeros(x.shape[0], dtype=np.int8)
    y[positives] = 1
    # The dual problem has one variable per document: with fewer documents than features (the
    # usual case) liblinear solves it 10x or more faster than the primal, to the same optimum.
    dual = x.shape[0] <= x.shape[1]
    model = LogisticRegression(C=config["C"], solver="liblinear", dual=dual,
                               max_iter=config["max_iter"], tol=config["tol"], random_state=0)
    model.fit(x, y)
    converged = int(np.max(model.n_iter_)) < config["max_iter"]
    return model.coef_[0], float(model.intercept_[0]), converged


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects CPU pinning (containers, taskset)
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _per_code(codes: list[str], values, what: str) -> list[str]:
    """One string per code, in `codes` order, from a mapping (missing: "") or a list."""
    if isinstance(values, Mapping):
        return [str(values.get(code) or "") for code in codes]
    values = [str(v or "") for v in values]
    if len(values) != len(codes):
        raise ClemError(f"{len(values)} {what} for {len(codes)} codes")
    return values


def _descriptions_list(codes: list[str], descriptions) -> list[str] | None:
    return None if descriptions is None else _per_code(codes, descriptions, "descriptions")


def _systems_list(codes: list[str], systems) -> list[str]:
    """Per code its system (icd10cm, icd10pcs, icd9cm, icd9pcs). Not given: guessed from the
    spelling as ICD-10 (CM or PCS), which is wrong for ICD-9 codes; "" where no guess fits."""
    if systems is not None:
        return _per_code(codes, systems, "code systems")
    from clem_icd.codes.systems import guess_icd10_system

    guessed = []
    for code in codes:
        try:
            guessed.append(str(guess_icd10_system(code)))
        except ValueError:
            guessed.append("")
    return guessed


def _positive_rows(labels: Sequence[Sequence[str]], codes: list[str]) -> list[list[int]]:
    """For each code (in `codes` order), the documents that have it."""
    column = {code: j for j, code in enumerate(codes)}
    rows: list[list[int]] = [[] for _ in codes]
    for i, doc_codes in enumerate(labels):
        if isinstance(doc_codes, str):
            raise ClemError(f"labels of document {i} must be a list of codes, not a string")
        for code in set(doc_codes):
            if code not in column:
                raise ClemError(f"labels of document {i}: code '{code}' is not in the code list")
            rows[column[code]].append(i)
    return rows


class TfidfCoder:
    """Scores notes for every code of `codes`; see the module docstring."""

    score_kind = PROBABILITY  # logistic regression (clem_icd.choice.SCORE_KINDS)

    def __init__(self, *, codes: list[str], config: dict, vocabulary: list[str], idf: np.ndarray,
                 weight: np.ndarray, bias: np.ndarray, fitted_index: np.ndarray,
                 threshold: float = 0.5, descriptions: list[str] | None = None,
                 code_systems: list[str] | None = None, dataset: dict | None = None,
                 text_cleaning: str = "none"):
        if text_cleaning not in TEXT_CLEANINGS:
            raise ClemError(f"text_cleaning must be one of {', '.join(TEXT_CLEANINGS)}, got {text_cleaning!r}")
        self.codes = list(codes)
        self.config = config
        self.threshold = float(threshold)
        self.descriptions = descriptions
        self.code_systems = _systems_list(self.codes, code_systems)
        self.dataset = dataset  # {"fingerprint", "path"} of the prepared dataset it was fitted on
        # What the training notes went through (clem_icd.data.text): new notes get the same, as
        # the neural coder does, or a raw note would be read with other words than training saw.
        self.text_cleaning = text_cleaning
        self.weight = weight  # (fitted codes, features), float32
        self.bias = bias  # (codes,), float32: constant logits included
        self.fitted_index = fitted_index  # column in `codes` of each row of `weight`
        self.vocabulary = list(vocabulary)
        self._vectorizer = _vectorizer(config, {term: i for i, term in enumerate(self.vocabulary)})
        self._vectorizer.idf_ = np.asarray(idf, dtype=np.float64)

    def __repr__(self) -> str:
        return (f"TfidfCoder(codes={len(self.codes)}, features={len(self.vocabulary)}, "
                f"fitted={len(self.fitted_index)}, threshold={self.threshold:g})")

    # ---- training ---------------------------------------------------------------------------

    @classmethod
    def fit(cls, texts: list[str], labels: list[list[str]], codes: list[str], *,
            descriptions=None, code_systems=None, config: dict | None = None,
            n_jobs: int | None = None, text_cleaning: str = "none") -> "TfidfCoder":
        """Fit on `texts` with their `labels`; `codes` fixes the label order of the scores.
        `descriptions` and `code_systems`: per code, a list in `codes` order or a mapping; code
        systems not given are guessed from the spelling as ICD-10 (give them for ICD-9 data).
        `n_jobs` threads fit codes in parallel (default: all available CPUs). `text_cleaning`:
        what `texts` already went through (clem_icd.data.text.TEXT_CLEANINGS, a prepared
        dataset's clean_text option); new notes are cleaned so before they are scored."""
        config = _merge_config(config)
        codes = list(codes)
        if len(set(codes)) != len(codes):
            raise ClemError("the code list has duplicates")
        if not codes:
            raise ClemError("the code list is empty")
        if len(texts) != len(labels):
            raise ClemError(f"{len(texts)} texts but {len(labels)} label lists")
        if not texts:
            raise ClemError("no training documents")
        not_text = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if not_text is not None:
            raise ClemError(f"text of document {not_text} is not a string")
        positives = _positive_rows(labels, codes)

        vectorizer = _vectorizer(config)
        try:
            features = vectorizer.fit_transform(texts)
        except ValueError as exc:  # e.g. no term left after min_df; the message has no text
            raise ClemError(f"cannot build TF-IDF features: {exc}") from None
        x = features.astype(np.float64)  # liblinear works in float64; avoids a copy per code

        n_docs = len(texts)
        bias = np.empty(len(codes), dtype=np.float32)
        learnable = []
        for j, rows in enumerate(positives):
            if not rows:
                bias[j] = -CONSTANT_LOGIT
            elif len(rows) == n_docs:
                bias[j] = CONSTANT_LOGIT
            else:
                learnable.append(j)
        weight = np.zeros((len(learnable), x.shape[1]), dtype=np.float32)

        def fit_row(row: int, j: int) -> bool:
            coef, intercept, converged = _fit_code(x, np.asarray(positives[j]), config)
            weight[row] = coef  # each thread writes its own row
            bias[j] = intercept
            return converged

        workers = n_jobs or _cpu_count()
        with warnings.catch_warnings():  # one summary below instead of a warning per code
            warnings.simplefilter("ignore", ConvergenceWarning)
            converged = Parallel(n_jobs=workers, prefer="threads")(
                delayed(fit_row)(row, j) for row, j in enumerate(learnable))
        if not all(converged):
            warnings.warn(f"TF-IDF baseline: {converged.count(False)} of {len(learnable)} codes "
                          f"did not converge in max_iter={config['max_iter']} iterations",
                          ConvergenceWarning, stacklevel=2)

        vocabulary = vectorizer.get_feature_names_out().tolist()
        return cls(codes=codes, config=config, vocabulary=vocabulary, idf=vectorizer.idf_,
                   weight=weight, bias=bias, fitted_index=np.asarray(learnable, dtype=np.int64),
                   descriptions=_descriptions_list(codes, descriptions),
                   code_systems=_systems_list(codes, code_systems), text_cleaning=text_cleaning)

    # ---- scoring ----------------------------------------------------------------------------

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities (len(texts), len(codes)), float32, columns in the order of `codes`."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        out = np.empty((len(texts), len(self.codes)), dtype=np.float32)
        weight_t = self.weight.T
        for start in range(0, len(texts), PREDICT_BATCH):
            batch = clean_texts(texts[start:start + PREDICT_BATCH], self.text_cleaning)
            logits = np.broadcast_to(self.bias, (len(batch), len(self.codes))).copy()
            if len(self.fitted_index):
                features = self._vectorizer.transform(batch)
                logits[:, self.fitted_index] += np.asarray(features @ weight_t, dtype=np.float32)
            out[start:start + len(batch)] = expit(logits)
        return out

    def predict(self, texts: list[str], threshold: float | None = None,
                top_k: int | None = None) -> list[list[dict]]:
        """Per text, the codes scored above the threshold (the tuned one by default), best
        first, each {code, system, description, score, probability}; `top_k` caps the list. The same
        shape and rule as `ICDCoder.predict` (which can also explain; this model cannot)."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts, not one string")
        threshold = self.threshold if threshold is None else float(threshold)
        descriptions = self.descriptions or [""] * len(self.codes)
        return [[code_entry(self.codes[j], self.code_systems[j], descriptions[j], row[j], self.score_kind)
                 for j in choose_codes(row, threshold, top_k)]
                for row in self.predict_proba(texts)]

    def note_predictor(self, options):
        """The streaming interface every model kind offers (see clem_icd.inference.run): a
        function texts -> per text {"codes": [...as predict...], "truncated": False} (a TF-IDF
        model reads the whole note). `options`: a clem_icd.inference.PredictOptions; what the
        baseline cannot do (evidence) is refused here, before any note is read."""
        if options.explain:
            raise ClemError("--explain needs a neural CLEM-ICD model; this is the TF-IDF baseline")

        def predict_notes(texts: list[str]) -> list[dict]:
            return [{"codes": codes, "truncated": False}
                    for codes in self.predict(texts, threshold=options.threshold, top_k=options.top_k)]

        return predict_notes

    # ---- saving and loading -----------------------------------------------------------------

    def save_pretrained(self, path: Path | str, metrics: dict | None = None) -> Path:
        """Write the model folder atomically (with `metrics` as metrics.json when given). An
        existing folder is replaced only when it is empty or holds a TF-IDF model, so that
        nothing else is ever deleted."""
        from safetensors.numpy import save_file

        path = Path(path)
        check_replaceable(path, MODEL_TYPE, "a TF-IDF model")
        with atomic_folder(path) as tmp:
            config = stamped({
                "model_type": MODEL_TYPE,
                "codes": self.codes,
                "code_systems": self.code_systems,
                "descriptions": self.descriptions,
                "threshold": self.threshold,
                "hyperparameters": self.config,
                "n_features": len(self.vocabulary),
                "n_fitted_codes": int(len(self.fitted_index)),
                "constant_logit": CONSTANT_LOGIT,
                "dataset": self.dataset,
                "text_cleaning": self.text_cleaning,
            })
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            idf = self._vectorizer.idf_.tolist()  # float repr round-trips exactly in JSON
            (tmp / VECTORIZER_FILE).write_text(
                json.dumps({"terms": self.vocabulary, "idf": idf}, ensure_ascii=False) + "\n",
                encoding="utf-8")
            save_file({"weight": np.ascontiguousarray(self.weight, dtype=np.float32),
                       "bias": np.ascontiguousarray(self.bias, dtype=np.float32),
                       "fitted_index": np.ascontiguousarray(self.fitted_index, dtype=np.int64)},
                      str(tmp / WEIGHTS_FILE), metadata={"format": "np", "model_type": MODEL_TYPE})
            if metrics is not None:
                write_json_atomic(metrics, tmp / METRICS_FILE)
        return path

    @classmethod
    def from_pretrained(cls, path: Path | str) -> "TfidfCoder":
        """Load a folder written by `save_pretrained`; a missing or damaged folder raises
        ClemError naming the folder and what is wrong."""
        path = Path(path)
        try:
            return cls._load(path)
        except ClemError:
            raise
        except Exception as exc:  # a damaged file: name it, without a traceback
            raise ClemError(f"{path}: not a readable TF-IDF model folder "
                            f"({exc.__class__.__name__}: {str(exc)[:200]})") from None

    @classmethod
    def _load(cls, path: Path) -> "TfidfCoder":
        from safetensors.numpy import load_file

        if not path.is_dir():
            raise ClemError(f"{path}: model folder not found")
        for name in (CONFIG_FILE, VECTORIZER_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise ClemError(f"{path / name}: not found (is {path} a TF-IDF model folder?)")
        config = _read_json(path / CONFIG_FILE)
        if config.get("model_type") != MODEL_TYPE:
            raise ClemError(f"{path / CONFIG_FILE}: model_type is {config.get('model_type')!r}, "
                            f"expected '{MODEL_TYPE}'")
        check_keys(path / CONFIG_FILE, config, CONFIG_KEYS)
        check_nested_keys(path / CONFIG_FILE, config, "hyperparameters", DEFAULT_CONFIG)
        codes = config["codes"]
        vectorizer = _read_json(path / VECTORIZER_FILE)
        terms, idf = vectorizer["terms"], np.asarray(vectorizer["idf"], dtype=np.float64)
        tensors = load_file(str(path / WEIGHTS_FILE))
        weight, bias, fitted = tensors["weight"], tensors["bias"], tensors["fitted_index"]
        problems = []
        if len(terms) != len(idf) or len(set(terms)) != len(terms):
            problems.append("vocabulary and idf do not match")
        if bias.shape != (len(codes),):
            problems.append(f"bias has shape {bias.shape}, expected ({len(codes)},)")
        if weight.shape != (len(fitted), len(terms)):
            problems.append(f"weight has shape {weight.shape}, expected ({len(fitted)}, {len(terms)})")
        if len(fitted) and (fitted.min() < 0 or fitted.max() >= len(codes)
                            or len(np.unique(fitted)) != len(fitted)):
            problems.append("fitted_index does not index the code list")
        systems = config.get("code_systems")
        if systems is not None and len(systems) != len(codes):
            problems.append(f"{len(systems)} code systems for {len(codes)} codes")
        if problems:
            raise ClemError(f"{path}: damaged TF-IDF model ({'; '.join(problems)})")
        if systems is None:
            # Folders written before code systems were stored. Refusing them would break models
            # that work, so the systems are guessed as before (ICD-10 from the spelling), loudly:
            # for ICD-9 codes the guess is wrong (486 would be PCS, 96.04 CM).
            warnings.warn(f"{path / CONFIG_FILE} does not record the code systems (written by an "
                          f"older clem-icd): guessing ICD-10-CM/PCS from each code's spelling, which "
                          f"is wrong for ICD-9 codes; refit the baseline to record them",
                          UserWarning, stacklevel=3)
        hyperparameters = _merge_config(config["hyperparameters"],
                                        lambda key: f"{path / CONFIG_FILE}: field 'hyperparameters.{key}'")
        # No text_cleaning: a folder written before it was recorded, read as before (raw).
        text_cleaning = config.get("text_cleaning", "none")
        if text_cleaning not in TEXT_CLEANINGS:
            raise ClemError(f"{path / CONFIG_FILE}: field 'text_cleaning' must be one of "
                            f"{', '.join(TEXT_CLEANINGS)}, got {text_cleaning!r}")
        return cls(codes=codes, config=hyperparameters, vocabulary=terms,
                   idf=idf, weight=weight, bias=bias, fitted_index=fitted,
                   threshold=config.get("threshold", 0.5), descriptions=config.get("descriptions"),
                   code_systems=systems, dataset=config.get("dataset"),
                   text_cleaning=text_cleaning)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClemError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ClemError(f"{path}: expected a JSON object")
    return data


