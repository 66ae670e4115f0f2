"""OpenSetCoder: a trained model plus its description matcher, so that the ranking can hold
codes the model never learnt (the code system's codes that no training note had, or a new
release's).

Codes with a training example keep the model's probability. Codes without one get the matcher's
calibrated probability: those the model does not have at all, and those it has but never saw
used (their label queries only ever learnt to say no). Both are probabilities that a code is
right, so one threshold and one ranking serve both. The same interface as every model kind
(clem_icd.loading): codes, threshold, predict_proba, predict, note_predictor.
"""

from __future__ import annotations

import numpy as np

from clem_icd.choice import choose_codes, code_entry

SOURCE = "description match"  # what a code reported by the matcher says it came from


def model_code_details(model) -> tuple[list[str], list[str]]:
    """(systems, descriptions) of a model's codes, whichever kind it is ('' where unknown)."""
    n = len(model.codes)
    config = getattr(model, "config", None)
    systems = getattr(model, "code_systems", None) or getattr(config, "code_systems", None) or [""] * n
    descriptions = getattr(model, "descriptions", None) or getattr(config, "descriptions", None) or [""] * n
    return list(systems), list(descriptions)


class OpenSetCoder:
    def __init__(self, model, matcher):
        self.model, self.matcher = model, matcher
        in_model = {code: i for i, code in enumerate(model.codes)}
        n = len(model.codes)
        systems, descriptions = model_code_details(model)
        columns, sources = [], []  # combined column <- matcher code, for codes without a training example
        self.replaced = []  # model columns whose probability the matcher's replaces
        extra = []
        for j, code in enumerate(matcher.codes):
            if code in in_model:
                if not matcher.seen[j]:
                    columns.append(in_model[code])
                    sources.append(j)
                    self.replaced.append(in_model[code])
            else:
                extra.append(j)
        for k, j in enumerate(extra):
            columns.append(n + k)
            sources.append(j)
        self.codes = list(model.codes) + [matcher.codes[j] for j in extra]
        self.code_systems = systems + [matcher.systems[j] for j in extra]
        self.descriptions = descriptions + [matcher.descriptions[j] for j in extra]
        self.columns, self.sources = np.array(columns, dtype=np.int64), np.array(sources, dtype=np.int64)
        self._replaced = set(self.replaced)

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def family_evidence(self, model_probabilities: np.ndarray) -> np.ndarray | float:
        """(notes, len(self.sources)) family evidence of the matcher's codes, or 0 when the
        matcher was calibrated without it."""
        if not self.matcher.uses_family:
            return 0.0
        return self.matcher.family_evidence(model_probabilities, self.model.codes,
                                            self.code_systems[:len(self.model.codes)])[:, self.sources]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        return self.combine(list(texts), self.model.predict_proba(list(texts)))

    def combine(self, texts: list[str], model_probabilities: np.ndarray) -> np.ndarray:
        """(len(texts), len(codes)): the model's probabilities (given: the caller may have scored
        the model on an accelerator) with the matcher's in the columns of codes without a
        training example."""
        out = np.zeros((len(texts), len(self.codes)), dtype=np.float32)
        out[:, :len(self.model.codes)] = model_probabilities
        similarity = self.matcher.similarities(list(texts))[:, self.sources]
        out[:, self.columns] = self.matcher.probability(similarity, self.family_evidence(model_probabilities))
        return out

    def sparse_scores(self, texts: list[str], model_probabilities: np.ndarray, keep: np.ndarray, top_k: int,
                      block: int = 64, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What `combine` gives, without its (notes x codes) matrix (19,802 x 140,694 float32 is
        11 GB on MIMIC-IV test): the columns `keep` (ascending) as they are, (notes, len(keep)),
        and of the other columns each note's top_k (indices into `codes`, best first, ties by
        column order) with their scores. Notes go `block` at a time; `progress(n)`: notes done."""
        keep = np.asarray(keep, dtype=np.int64)
        others = np.setdiff1d(np.arange(len(self.codes)), keep)
        k = min(top_k, len(others))
        dense = np.zeros((len(texts), len(keep)), dtype=np.float32)
        index = np.zeros((len(texts), k), dtype=np.int64)
        values = np.zeros((len(texts), k), dtype=np.float32)
        for start in range(0, len(texts), block):
            rows = self.combine(texts[start:start + block], model_probabilities[start:start + block])
            dense[start:start + len(rows)] = rows[:, keep]
            rest = rows[:, others]  # one copy of the block's other columns, for both reads below
            best = top_columns(rest, k)
            index[start:start + len(rows)] = others[best]
            values[start:start + len(rows)] = np.take_along_axis(rest, best, axis=1)
            if progress:
                progress(start + len(rows))
        return dense, index, values

    def predict(self, texts: list[str], threshold: float | None = None, top_k: int | None = None) -> list[list[dict]]:
        threshold = self.threshold if threshold is None else float(threshold)
        return [[self._entry(j, float(row[j])) for j in choose_codes(row, threshold, top_k)]
                for row in self.predict_proba(texts)]

    @property
    def score_kind(self) -> str:
        """The model's: the matcher's calibrated probabilities join a ranking of probabilities
        (or, beside an rrf-fused model, of rank scores, where they are then one more score)."""
        return self.model.score_kind

    def _entry(self, column: int, score: float) -> dict:
        return code_entry(self.codes[column], self.code_systems[column], self.descriptions[column], score,
                          self.score_kind)

    def note_predictor(self, options):
        """The model's note predictor, with the matcher's codes merged in (evidence, when asked
        for, is the passage that matched the description best: {start, end, score (cosine),
        text})."""
        from dataclasses import replace

        top_k = options.top_k
        # The model's own list may hold codes the matcher replaces: ask for that many more.
        base = self.model.note_predictor(replace(options, top_k=None if top_k is None else top_k + len(self._replaced)))
        replaced_codes = {self.model.codes[i] for i in self._replaced}

        def predict_notes(texts: list[str]) -> list[dict]:
            threshold = self.threshold if options.threshold is None else options.threshold
            results = base(texts)
            # Family evidence needs every code's probability, which the model's note predictor
            # does not return: one more pass of the model, only when the matcher uses it.
            family = self.family_evidence(self.model.predict_proba(texts)) if self.matcher.uses_family else None
            for i, (text, result) in enumerate(zip(texts, results)):
                match = self.matcher.match(text)
                probabilities = self.matcher.probability(match.similarity[self.sources],
                                                         0.0 if family is None else family[i])
                codes = [c for c in result["codes"] if c["code"] not in replaced_codes]
                for k in choose_codes(probabilities, threshold, top_k):
                    entry = {**self._entry(int(self.columns[k]), float(probabilities[k])), "source": SOURCE}
                    j = int(self.sources[k])
                    if options.explain and match.best_passage[j] >= 0:
                        start, end = match.passages[match.best_passage[j]]
                        entry["evidence"] = [{"start": start, "end": end, "score": float(match.similarity[j]),
                                              "text": text[start:end]}]
                    codes.append(entry)
                codes.sort(key=lambda c: -c["score"])  # stable: the model's order on ties
                result["codes"] = codes[:top_k]
            return results

        return predict_notes


def top_columns(rows: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of its k highest values, best first, ties by column order: the first
    k columns of a stable descending sort of the row, found by a partition (a sort of 140,000
    columns a note would cost more than the matching)."""
    if k == 0:
        return np.zeros((len(rows), 0), dtype=np.int64)
    kth = -np.partition(-rows, k - 1, axis=1)[:, k - 1]  # each row's k-th highest value
    out = np.empty((len(rows), k), dtype=np.int64)
    for r, row in enumerate(rows):
        above = np.flatnonzero(row > kth[r])
        chosen = np.concatenate([above, np.flatnonzero(row == kth[r])[:k - len(above)]])
        out[r] = chosen[np.argsort(-row[chosen], kind="stable")]
    return out
