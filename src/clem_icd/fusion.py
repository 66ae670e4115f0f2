"""Rank fusion of trained models: an ensemble that is itself a model folder.

`FusedModel(members, weights, k=60, threshold=0.5, method="rrf")` offers the interface of every
model kind (see clem_icd.loading): `codes`, `threshold`, `predict_proba(texts)`, `predict(texts,
threshold=None, top_k=None)` and `note_predictor(options)`.

Its codes are the union of the members' codes: the first member's in its order, then the codes
only later members know. Per note, code c scores

- rrf (weighted reciprocal rank fusion): sum_m w_m / (k + rank_m(c)) / sum_m w_m / (k + 1), with
  rank 1 the member's best code (ties by the member's column order) and a code the member does not
  know contributing 0. 1 means best in every member. Members need not be calibrated alike (a
  TF-IDF and a neural coder are not): only their rankings count.
- mean: sum_m w_m p_m(c) / sum_m w_m, a code the member does not know counting as p = 0.

Scores are in [0, 1], but an rrf score is a rank, not a probability: its threshold has to be
tuned on val like any other (`fit_threshold`, with the one tuning rule of the protocol). So
`score_kind` says what the scores are: "rank score" for rrf, "probability" for mean fusion of
members whose scores are all probabilities. Records (`predict`, `note_predictor`) carry `score`,
and `probability` only when the scores are probabilities (clem_icd.choice.code_entry); the page
and FHIR output name a rank score as such.

A saved fused model is a self-contained folder:
    config.json     model_type "fusion", method, k, weights, threshold, members (relative paths)
    members/0 ...   copies of the member model folders (their model files; not the checkpoints
                    or evaluation outputs a training folder may also hold)
    metrics.json    (when given) val metrics of the fusion and of its members

This module sits just below clem_icd.loading: it never loads a folder by itself, the caller hands
it the members (`from_pretrained(path, load_member)`), so the one loader stays the one place that
knows every model kind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from clem_icd.atomic import atomic_folder, check_replaceable, write_json_atomic
from clem_icd.choice import PROBABILITY, RANK_SCORE, choose_codes, code_entry
from clem_icd.errors import ClemError
from clem_icd.saved import check_keys, stamped

MODEL_TYPE = "fusion"
METHODS = ("rrf", "mean")
# k = 60: the constant of Cormack et al. (2009), who found it robust across collections; it
# damps the weight of the very top ranks so that one member's first place does not dominate.
DEFAULT_K = 60.0
CONFIG_FILE, METRICS_FILE, MEMBERS_DIR = "config.json", "metrics.json", "members"
CONFIG_KEYS = ("model_type", "method", "k", "weights", "threshold", "members")  # all required
# Notes fused at a time: the ranks and sums are float64 (notes x codes), so a whole test split of
# MIMIC-IV (19,802 x 7,942) at once would take several GB beside the members' own scores.
FUSE_BLOCK = 1024


class FusedModel:
    """Weighted rank (or mean) fusion of loaded models; see the module docstring."""

    def __init__(self, members: Sequence, weights: Sequence[float] | None = None, *, k: float = DEFAULT_K,
                 threshold: float = 0.5, method: str = "rrf", sources: Sequence[Path | str] | None = None):
        self.members = list(members)
        if not self.members:
            raise ClemError("a fused model needs at least one member model")
        self.weights = [1.0] * len(self.members) if weights is None else [float(w) for w in weights]
        _check_settings(self.weights, len(self.members), k, method, threshold)
        self.k, self.method, self.threshold = float(k), method, float(threshold)
        # The folders the members were loaded from: what save_pretrained copies.
        self.sources = None if sources is None else [Path(s) for s in sources]
        if self.sources is not None and len(self.sources) != len(self.members):
            raise ClemError(f"{len(self.sources)} member folders for {len(self.members)} members")

        self.codes: list[str] = []
        self.code_systems: list[str] = []
        self.descriptions: list[str] = []
        column: dict[str, int] = {}
        self._columns = []  # per member, the fused column of each of its codes
        for member in self.members:
            systems, descriptions = _code_details(member)
            for code, system, description in zip(member.codes, systems, descriptions):
                if code not in column:
                    column[code] = len(self.codes)
                    self.codes.append(code)
                    self.code_systems.append(system)
                    self.descriptions.append(description)
            self._columns.append(np.asarray([column[c] for c in member.codes], dtype=np.int64))

    def __repr__(self) -> str:
        return (f"FusedModel(method={self.method}, members={len(self.members)}, weights={self.weights}, "
                f"k={self.k:g}, codes={len(self.codes)}, threshold={self.threshold:g})")

    # ---- scoring ----------------------------------------------------------------------------

    def fuse(self, member_scores: Sequence[np.ndarray]) -> np.ndarray:
        """Fused scores (notes, len(codes)), float32 in [0, 1], from each member's probabilities
        (notes, len(member.codes)) in the order of its own codes."""
        if len(member_scores) != len(self.members):
            raise ValueError(f"{len(member_scores)} score matrices for {len(self.members)} members")
        n = len(member_scores[0])
        member_scores = [np.asarray(scores, dtype=np.float32) for scores in member_scores]
        for scores, columns in zip(member_scores, self._columns):
            if scores.shape != (n, len(columns)):
                raise ValueError(f"member scores of shape {scores.shape}, expected ({n}, {len(columns)})")
        norm = sum(self.weights) / (self.k + 1) if self.method == "rrf" else sum(self.weights)
        out = np.empty((n, len(self.codes)), dtype=np.float32)
        for start in range(0, n, FUSE_BLOCK):
            fused = np.zeros((min(FUSE_BLOCK, n - start), len(self.codes)), dtype=np.float64)
            for scores, weight, columns in zip(member_scores, self.weights, self._columns):
                if weight == 0:
                    continue
                block = scores[start:start + FUSE_BLOCK]
                fused[:, columns] += weight / (self.k + _ranks(block)) if self.method == "rrf" else weight * block
            out[start:start + len(fused)] = np.clip(fused / norm, 0.0, 1.0)  # clip: rounding may pass 1 by an ulp
        return out

    @property
    def score_kind(self) -> str:
        """"probability" for the mean of probabilities, else "rank score" (rrf, or a mean with a
        member whose scores are rank scores: an average of ranks is no probability either)."""
        # A member without score_kind (a model of its own making) is read by predict_proba, whose
        # contract is probabilities.
        probabilities = all(getattr(member, "score_kind", PROBABILITY) == PROBABILITY for member in self.members)
        return PROBABILITY if self.method == "mean" and probabilities else RANK_SCORE

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Fused scores (len(texts), len(codes)), float32 in [0, 1], columns in `codes` order
        (probabilities or rank scores, as `score_kind` says; the name is every model kind's)."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        texts = list(texts)
        return self.fuse([member.predict_proba(texts) for member in self.members])

    def predict(self, texts: list[str], threshold: float | None = None,
                top_k: int | None = None) -> list[list[dict]]:
        """Per text, the codes scored above the threshold (the tuned one by default), best first
        (ties by column order), each {code, system, description, score[, probability]} (the fused
        score; `probability` only when `score_kind` is one); `top_k` caps the list. The rule of
        every model kind."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts, not one string")
        return [self._choose(row, threshold, top_k) for row in self.predict_proba(texts)]

    def note_predictor(self, options):
        """The streaming interface of clem_icd.inference.run: texts -> per text {"codes",
        "truncated"}, codes chosen from the fused scores with the threshold and top_k of
        `options`; a note is truncated when any member truncated it. Evidence is refused before
        any note is read: it would explain one member's scores, not the fused ranking."""
        if options.explain:
            raise ClemError("--explain is not supported for a fused model (evidence would explain one "
                            "member, not the fused ranking); explain with one of its member models")
        score = self.note_scores(options)

        def predict_notes(texts: list[str]) -> list[dict]:
            scores, truncated = score(texts)
            return [{"codes": self._choose(row, options.threshold, options.top_k), "truncated": cut}
                    for row, cut in zip(scores, truncated)]

        return predict_notes

    def note_scores(self, options) -> Callable[[list[str]], tuple[np.ndarray, list[bool]]]:
        """texts -> (fused scores (len(texts), len(codes)), truncated flags), each member reading
        the notes with the reading options of `options` (see _member_scorer)."""
        scorers = [_member_scorer(member, options) for member in self.members]

        def score(texts: list[str]) -> tuple[np.ndarray, list[bool]]:
            results = [scorer(texts) for scorer in scorers]
            truncated = [any(flags) for flags in zip(*(flags for _, flags in results))]
            return self.fuse([scores for scores, _ in results]), truncated

        return score

    def _choose(self, row: np.ndarray, threshold: float | None, top_k: int | None) -> list[dict]:
        threshold = self.threshold if threshold is None else float(threshold)
        kind = self.score_kind
        return [code_entry(self.codes[j], self.code_systems[j], self.descriptions[j], row[j], kind)
                for j in choose_codes(row, threshold, top_k)]

    # ---- saving and loading -----------------------------------------------------------------

    def save_pretrained(self, path: Path | str, metrics: dict | None = None) -> Path:
        """Write the fused folder atomically: config.json, a copy of each member folder under
        members/, and metrics.json when given. An existing folder is replaced only when it is
        empty or holds a fused model, and never when it is one of the members' own folders."""
        path = Path(path)
        self.check_destination(path)
        with atomic_folder(path) as tmp:
            members = []
            for i, source in enumerate(self.sources):
                members.append(f"{MEMBERS_DIR}/{i}")
                _copy_model_folder(source, tmp / MEMBERS_DIR / str(i))
            config = {"model_type": MODEL_TYPE, "method": self.method, "k": self.k, "weights": self.weights,
                      "threshold": self.threshold, "members": members}
            write_json_atomic(stamped(config), tmp / CONFIG_FILE)
            if metrics is not None:
                write_json_atomic(metrics, tmp / METRICS_FILE)
        return path

    def check_destination(self, path: Path | str) -> None:
        """Raises ClemError when `save_pretrained(path)` would refuse, so that a caller can ask
        before the work of tuning."""
        path = Path(path)
        if self.sources is None:
            raise ClemError("this fused model was built from loaded models without their folders "
                            "(pass sources=): there is nothing to copy into members/")
        for source in self.sources:
            if _inside(source, path):  # replacing `path` would delete the member being copied
                raise ClemError(f"{path}: is or contains member folder {source}; choose another path")
        check_replaceable(path, MODEL_TYPE, "a fused model")

    @classmethod
    def from_pretrained(cls, path: Path | str, load_member: Callable[[Path], object]) -> "FusedModel":
        """Load a folder written by `save_pretrained`; `load_member(folder)` loads each member
        (clem_icd.loading.load_model, which knows every model kind). Errors name the file and field."""
        path = Path(path)
        config_path = path / CONFIG_FILE
        config = _read_config(config_path)
        members = config["members"]
        folders = []
        for i, member in enumerate(members):
            folder = path / member
            if not folder.is_dir():
                raise ClemError(f"{folder}: member model folder not found (named by {config_path} field "
                                f"'members'[{i}])")
            folders.append(folder)
        # A member's own errors name its files (members/i/...), so they are not wrapped here.
        return cls([load_member(folder) for folder in folders], config["weights"], k=config["k"],
                   threshold=config["threshold"], method=config["method"], sources=folders)


def fit_threshold(model: FusedModel, dataset, split: str = "val",
                  score: Callable[[object, list[str]], np.ndarray] | None = None) -> dict:
    """Tune `model.threshold` on `split` of a prepared dataset with the protocol's one rule
    (clem_icd.evaluation.metrics.tune_threshold: argmax of micro-F1 over 100 values in [0, 1])
    and return {"threshold", <split>: the fusion's metrics at it, "members": each member's
    metrics at its own threshold}. Every member reads the split once, through `score(member,
    texts)` (default: its predict_proba; clem_icd.evaluation.scoring.Scorer scores a neural
    member on the accelerator, as training scored val). Dataset codes that no member knows
    count as misses, as in `clem-icd evaluate`."""
    from clem_icd.data.labels import targets_matrix
    from clem_icd.evaluation.metrics import compute_metrics, tune_threshold

    documents = dataset.split(split)
    if documents.is_empty():
        raise ClemError(f"{dataset.path}: no documents in split '{split}' to tune the fused threshold on")
    texts = documents["text"].to_list()
    known = set(model.codes)
    codes = model.codes + [c for c in dataset.code_list if c not in known]
    targets = targets_matrix(documents["codes"].to_list(), codes)
    score = score or (lambda member, notes: member.predict_proba(notes))
    member_scores = [score(member, texts) for member in model.members]

    def widened(scores: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros((len(texts), len(codes)), dtype=np.float32)
        out[:, np.arange(scores.shape[1]) if columns is None else columns] = scores
        return out

    fused = widened(model.fuse(member_scores))
    model.threshold = tune_threshold(fused, targets)
    members = [{"threshold": float(member.threshold),
                **compute_metrics(widened(scores, columns), targets, float(member.threshold))}
               for member, scores, columns in zip(model.members, member_scores, model._columns)]
    return {"threshold": model.threshold, split: compute_metrics(fused, targets, model.threshold),
            "members": members}


# ---- helpers --------------------------------------------------------------------------------


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Per row, the rank of each column (1 = highest score; ties by column order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty(scores.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1.0, scores.shape[1] + 1), scores.shape), axis=1)
    return ranks


def _member_scorer(member, options) -> Callable[[list[str]], tuple[np.ndarray, list[bool]]]:
    """texts -> (the member's probabilities in its code order, truncated flags).

    A neural coder (it has a tokenizer, the test clem_icd.serve.engine makes too) reads notes with
    the reading options (--window-stride, --max-batch-tokens, --precision) and may truncate them:
    it goes through its own note predictor, asked for every code with a positive probability,
    which gives back its whole probability row (a code left out has probability 0). A model
    without reading options (the TF-IDF baseline reads whole notes) is scored by predict_proba,
    without building a dict per code; a fused member fuses its own members so."""
    if hasattr(member, "note_scores"):
        return member.note_scores(options)
    if not hasattr(member, "tokenizer"):
        return lambda texts: (member.predict_proba(texts), [False] * len(texts))
    predict = member.note_predictor(replace(options, threshold=0.0, top_k=None))
    index = {code: j for j, code in enumerate(member.codes)}

    def score(texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        rows = np.zeros((len(texts), len(index)), dtype=np.float32)
        truncated = []
        for i, result in enumerate(predict(texts)):
            truncated.append(bool(result["truncated"]))
            rows[i, [index[c["code"]] for c in result["codes"]]] = [c["score"] for c in result["codes"]]
        return rows, truncated

    return score


def _code_details(member) -> tuple[list[str], list[str]]:
    """Per code of `member`, its system and description ("" where unknown), wherever its kind
    keeps them: the neural coder in its config, the TF-IDF and fused models on themselves."""
    settings = getattr(member, "config", None)
    holder = settings if hasattr(settings, "code_systems") else member
    n = len(member.codes)
    systems = list(getattr(holder, "code_systems", None) or [""] * n)
    descriptions = list(getattr(holder, "descriptions", None) or [""] * n)
    return [str(s or "") for s in systems], [str(d or "") for d in descriptions]


def _check_settings(weights: list[float], members: int, k, method: str, threshold) -> None:
    """Raises ClemError naming the setting (as a config field / CLI option) that is wrong."""
    if method not in METHODS:
        raise ClemError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(weights) != members:
        raise ClemError(f"{len(weights)} weights for {members} members (one weight per member)")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ClemError(f"weights must be finite, at least 0 and not all 0, got {weights}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not np.isfinite(k) or k < 0:
        raise ClemError(f"k must be a number of at least 0, got {k!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ClemError(f"threshold must be a number in [0, 1], got {threshold!r}")


def _read_config(config_path: Path) -> dict:
    if not config_path.is_file():
        raise ClemError(f"{config_path}: not found (is {config_path.parent} a fused model folder?)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClemError(f"{config_path}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise ClemError(f"{config_path}: field 'model_type' is not '{MODEL_TYPE}'")
    check_keys(config_path, config, CONFIG_KEYS)
    for field in CONFIG_KEYS:
        if field not in config:
            raise ClemError(f"{config_path}: field '{field}' is missing")
    members, weights = config["members"], config["weights"]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ClemError(f"{config_path}: field 'members' must be a non-empty list of folder names")
    for member in members:
        # Members live inside the folder: a path out of it would not travel with the model.
        if Path(member).is_absolute() or ".." in Path(member).parts:
            raise ClemError(f"{config_path}: field 'members': {member!r} is not a folder inside the model folder")
    if not isinstance(weights, list) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                for w in weights):
        raise ClemError(f"{config_path}: field 'weights' must be a list of numbers")
    try:
        _check_settings([float(w) for w in weights], len(members), config["k"], config["method"],
                        config["threshold"])
    except ClemError as exc:
        raise ClemError(f"{config_path}: {exc}") from None
    return config


def _copy_model_folder(source: Path, target: Path) -> None:
    """A member's model files: the regular files at the top of its folder (config, weights,
    tokenizer, metrics, card) and, for a fused member, its own members. Subfolders a training or
    evaluation leaves beside a model (checkpoints, best-epoch-*, evaluation outputs) are not copied."""
    source = Path(source)
    if not (source / CONFIG_FILE).is_file():
        raise ClemError(f"{source / CONFIG_FILE}: not found (is {source} a model folder?)")
    target.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.is_file() and not item.name.startswith("."):  # hidden: temporary files of a writer
            shutil.copy2(item, target / item.name)
    config = json.loads((source / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("model_type") == MODEL_TYPE:
        for member in config.get("members", []):
            _copy_model_folder(source / member, target / member)


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies in it (links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
