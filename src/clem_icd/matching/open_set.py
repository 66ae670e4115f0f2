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

from clem_icd.choice import choose_codes

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
        out = np.zeros((len(texts), len(self.codes)), dtype=np.float32)
        model_probabilities = self.model.predict_proba(list(texts))
        out[:, :len(self.model.codes)] = model_probabilities
        similarity = self.matcher.similarities(list(texts))[:, self.sources]
        out[:, self.columns] = self.matcher.probability(similarity, self.family_evidence(model_probabilities))
        return out

    def predict(self, texts: list[str], threshold: float | None = None, top_k: int | None = None) -> list[list[dict]]:
        threshold = self.threshold if threshold is None else float(threshold)
        return [[self._entry(j, float(row[j])) for j in choose_codes(row, threshold, top_k)]
                for row in self.predict_proba(texts)]

    def _entry(self, column: int, probability: float) -> dict:
        return {"code": self.codes[column], "system": self.code_systems[column],
                "description": self.descriptions[column], "probability": probability}

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
                codes.sort(key=lambda c: -c["probability"])  # stable: the model's order on ties
                result["codes"] = codes[:top_k]
            return results

        return predict_notes
