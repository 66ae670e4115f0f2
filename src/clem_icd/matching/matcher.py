"""DescriptionMatcher: how well each code's description matches some passage of a note.

A sentence encoder (by default the coder's own pretrained encoder before fine-tuning: for the
MiniLM of the CodiEsp recipes that is all-MiniLM-L6-v2, trained for exactly this kind of
similarity) embeds every text of every code once (mean-pooled token states, unit length). A note
is cut into short passages (clem_icd.matching.segments); a code's similarity is the best cosine
between any of its texts and any passage, and the passage that gave it is the evidence.

Similarity is turned into a probability by a logistic fit on the training notes in the situation
the matcher is for: for each training note, the candidate codes are those that no *other*
training note has (what a coder trained without this note would not know), and the note's own
codes among them are the positives. So the probabilities say how often a description match of
that strength is a correct unseen code, and can be ranked beside the coder's probabilities.
A second feature, when the model's probabilities are given, is the family evidence: the model's
highest probability for a trained code of the same family (code_space.code_family: CM category,
PCS section + body system + operation), since an unseen code is most often a sibling of a code the
model knows (K35.89 beside a trained K35.80).

Saved as a folder (`save_pretrained` / `from_pretrained`): config.json, the encoder and its
tokenizer (encoder/), the text embeddings in float16 and the text -> code index
(embeddings.safetensors), and the codes with system, description and whether training saw
them (codes.tsv).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from clem_icd.atomic import atomic_folder, check_replaceable
from clem_icd.errors import ClemError
from clem_icd.matching.code_space import SpaceCode, code_family
from clem_icd.matching.segments import DEFAULT_WORDS, note_passages
from clem_icd.saved import VERSION_KEY, check_keys, stamped

MODEL_TYPE = "clem_icd_matcher"
CANDIDATES_PER_NOTE = 200  # calibration: the best-matching unseen codes of each training note


@dataclass
class MatcherConfig:
    encoder: str  # where the sentence encoder came from (hub id, folder or package://)
    words: int = DEFAULT_WORDS  # passage length in words
    max_tokens: int = 64  # tokens per text and per passage (16 words are ~25 tokens)
    systems: list[str] = field(default_factory=list)  # code systems of the space
    # probability = sigmoid(slope * similarity + family_slope * family evidence + intercept)
    calibration: dict = field(default_factory=lambda: {"slope": 1.0, "family_slope": 0.0, "intercept": 0.0})
    calibration_notes: int = 0
    model_type: str = MODEL_TYPE


@dataclass
class MatchResult:
    similarity: np.ndarray  # (codes,) best cosine per code
    passages: list[tuple[int, int]]  # the note's passages
    best_passage: np.ndarray  # (codes,) index into passages of each code's best match (-1: none)


class DescriptionMatcher:
    def __init__(self, config: MatcherConfig, encoder, tokenizer, codes: list[str], systems: list[str],
                 descriptions: list[str], seen: np.ndarray, text_embeddings: torch.Tensor,
                 text_code: torch.Tensor):
        self.config = config
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.codes, self.systems, self.descriptions = codes, systems, descriptions
        self.seen = np.asarray(seen, dtype=bool)  # codes with a training example
        # On the encoder's device: a note's passages against every text is a (passages x
        # ~300,000) product, most of the matching's work.
        device = next(self.encoder.parameters()).device
        self.text_embeddings = text_embeddings.float().to(device)
        self.text_code = text_code.long().to(device)
        self.index = {code: j for j, code in enumerate(codes)}
        families = [code_family(c, s) for c, s in zip(codes, systems)]
        self.family_ids = {f: i for i, f in enumerate(dict.fromkeys(families))}
        self.family = np.array([self.family_ids[f] for f in families], dtype=np.int64)

    def family_evidence(self, model_probabilities: np.ndarray, model_codes: list[str], model_systems: list[str],
                        known: np.ndarray | None = None) -> np.ndarray:
        """(notes, codes of this matcher): the model's highest probability for a trained code of
        each code's family (0 when the model has none). `known` (per model code) says which of
        the model's codes count as trained; default: all but those this matcher marks unseen."""
        if known is None:
            known = np.array([not (c in self.index and not self.seen[self.index[c]]) for c in model_codes])
        columns, families = [], []
        for i, (code, system) in enumerate(zip(model_codes, model_systems)):
            family = self.family_ids.get(code_family(code, system))
            if known[i] and family is not None:
                columns.append(i)
                families.append(family)
        out = np.zeros((len(model_probabilities), len(self.family_ids)), dtype=np.float32)
        if columns:
            np.maximum.at(out, (slice(None), np.array(families)), np.asarray(model_probabilities)[:, columns])
        return out[:, self.family]

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, encoder: str, space: list[SpaceCode], seen_codes: set[str], *, words: int = DEFAULT_WORDS,
              batch_size: int = 256, progress=None, device: str | None = None) -> "DescriptionMatcher":
        """Embed every text of `space` with the encoder on `device` (default cpu; uncalibrated:
        call `calibrate`)."""
        from transformers import AutoModel

        from clem_icd.model.coder import load_tokenizer, resolve_encoder

        if not space:
            raise ClemError("the code space is empty")
        path = resolve_encoder(encoder)
        model = AutoModel.from_pretrained(path).to(device or "cpu")
        config = MatcherConfig(encoder=encoder, words=words, systems=sorted({c.system for c in space}))
        texts, text_code = [], []
        for j, entry in enumerate(space):
            texts.extend(entry.texts)
            text_code.extend([j] * len(entry.texts))
        # Codes share texts (a prefix and its only code, a stem and its subcategory): each
        # distinct text is embedded once.
        distinct = list(dict.fromkeys(texts))
        position = {text: i for i, text in enumerate(distinct)}
        matcher = cls(config, model, load_tokenizer(encoder), [c.code for c in space], [c.system for c in space],
                      [c.description for c in space], np.array([c.code in seen_codes for c in space]),
                      torch.zeros(0, model.config.hidden_size), torch.tensor(text_code))
        # Rounded to float16 as saved, so a matcher scores the same before and after saving.
        embedded = matcher.embed(distinct, batch_size=batch_size, progress=progress).half().float()
        matcher.text_embeddings = embedded[torch.tensor([position[text] for text in texts])].to(model.device)
        return matcher

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64, progress=None) -> torch.Tensor:
        """Unit-length mean-pooled embeddings (len(texts), hidden), float32. Texts are batched by
        length (a batch of titles pads to a dozen tokens, not to the longest title)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.encoder.config.hidden_size)
        device = next(self.encoder.parameters()).device
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.config.max_tokens, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            states = self.encoder(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
            if progress:
                progress(len(rows))
        return out

    # ------------------------------------------------------------------ scoring

    def match(self, text: str) -> MatchResult:
        """Each code's best cosine over the note's passages and the code's texts."""
        passages = note_passages(text, self.config.words)
        n_codes = len(self.codes)
        if not passages:
            return MatchResult(np.full(n_codes, -1.0, np.float32), [], np.full(n_codes, -1))
        device = self.text_embeddings.device
        embedded = self.embed([text[s:e] for s, e in passages]).to(device)
        cosine = embedded @ self.text_embeddings.T  # (passages, texts)
        best_cosine, best_passage = cosine.max(0)
        per_code = torch.full((n_codes,), -1.0, device=device).scatter_reduce(0, self.text_code, best_cosine, "amax")
        # The passage of each code's best text: among a code's texts, the one whose cosine won.
        winner = torch.full((n_codes,), -1, dtype=torch.long, device=device)
        won = best_cosine == per_code[self.text_code]
        winner[self.text_code[won]] = best_passage[won]
        return MatchResult(per_code.cpu().numpy(), passages, winner.cpu().numpy())

    def similarities(self, texts: list[str]) -> np.ndarray:
        """(len(texts), codes) best cosines."""
        return np.stack([self.match(t).similarity for t in texts]) if texts else np.zeros((0, len(self.codes)), np.float32)

    @property
    def uses_family(self) -> bool:
        return bool(self.config.calibration.get("family_slope", 0.0))

    def probability(self, similarity: np.ndarray, family: np.ndarray | float = 0.0) -> np.ndarray:
        c = self.config.calibration
        logit = c["slope"] * similarity + c.get("family_slope", 0.0) * family + c["intercept"]
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)

    # ------------------------------------------------------------------ calibration

    def calibrate(self, texts: list[str], labels: list[list[str]], progress=None,
                  model_probabilities: np.ndarray | None = None, model_codes: list[str] | None = None,
                  model_systems: list[str] | None = None) -> dict:
        """Fit similarity (and, given the model's probabilities on these notes, family
        evidence) -> probability on training notes, leave-one-note-out (module docstring).
        Returns the fit and how many pairs it saw."""
        from sklearn.linear_model import LogisticRegression

        note_counts: dict[str, int] = {}
        for codes in labels:
            for code in set(codes):
                note_counts[code] = note_counts.get(code, 0) + 1
        counts = np.array([note_counts.get(c, 0) for c in self.codes])
        family = model_probabilities is not None
        if family:
            model_counts = np.array([note_counts.get(c, 0) for c in model_codes])
        xs, ys = [], []
        for i, (text, codes) in enumerate(zip(texts, labels)):
            similarity = self.match(text).similarity
            own = np.zeros(len(self.codes), dtype=bool)
            own[[self.index[c] for c in set(codes) if c in self.index]] = True
            # Unseen without this note: codes no other training note has.
            candidates = np.flatnonzero(counts == own)
            top = candidates[np.argsort(-similarity[candidates], kind="stable")[:CANDIDATES_PER_NOTE]]
            features = [similarity]
            if family:
                # Trained without this note: the model codes some other training note has.
                own_codes = set(codes)
                mine = np.array([c in own_codes for c in model_codes])
                evidence = self.family_evidence(model_probabilities[i:i + 1], model_codes, model_systems,
                                                model_counts > mine)[0]
                # The candidates a ranking would reach through either feature: the best matches,
                # and the best matches within the families the model believes in.
                by_family = candidates[np.lexsort((-similarity[candidates], -evidence[candidates]))]
                top = np.union1d(top, by_family[:CANDIDATES_PER_NOTE])
                features.append(evidence)
            features = [f[top] for f in features]
            xs.append(np.stack(features, 1))
            ys.append(own[top])
            if progress:
                progress(1)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if y.all() or not y.any():
            raise ClemError("calibration needs training notes with codes that no other note has, and others "
                            f"(got {int(y.sum())} positive of {len(y)} candidate pairs)")
        fit = LogisticRegression(C=1.0).fit(x, y)
        self.config.calibration = {"slope": float(fit.coef_[0, 0]),
                                   "family_slope": float(fit.coef_[0, 1]) if family else 0.0,
                                   "intercept": float(fit.intercept_[0]), "pairs": int(len(y)),
                                   "positives": int(y.sum())}
        self.config.calibration_notes = len(texts)
        return self.config.calibration

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, path: Path | str) -> Path:
        """Write the matcher folder (to a temporary folder beside it, then renamed)."""
        import polars as pl
        from safetensors.torch import save_file

        path = Path(path)
        check_replaceable(path, MODEL_TYPE, "a description matcher")
        with atomic_folder(path) as tmp:
            (tmp / "config.json").write_text(json.dumps(stamped(asdict(self.config)), indent=2) + "\n")
            self.encoder.save_pretrained(tmp / "encoder")
            self.tokenizer.save_pretrained(tmp / "encoder")
            save_file({"text_embeddings": self.text_embeddings.half().cpu().contiguous(),
                       "text_code": self.text_code.int().cpu().contiguous()}, tmp / "embeddings.safetensors")
            pl.DataFrame({"code": self.codes, "system": self.systems, "description": self.descriptions,
                          "seen": self.seen.tolist()}).write_csv(tmp / "codes.tsv", separator="\t")
        return path

    @classmethod
    def from_pretrained(cls, path: Path | str, device: str | None = None) -> "DescriptionMatcher":
        import polars as pl
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        try:
            values = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ClemError(f"{path / 'config.json'}: cannot read matcher config ({exc.__class__.__name__})") from None
        if values.get("model_type") != MODEL_TYPE:
            raise ClemError(f"{path / 'config.json'}: not a description matcher (model_type {values.get('model_type')!r})")
        for name in ("embeddings.safetensors", "codes.tsv", "encoder"):
            if not (path / name).exists():
                raise ClemError(f"{path / name}: missing from the matcher folder")
        check_keys(path / "config.json", values, MatcherConfig.__dataclass_fields__)
        values.pop(VERSION_KEY, None)
        config = MatcherConfig(**values)
        tensors = load_file(path / "embeddings.safetensors")
        codes = pl.read_csv(path / "codes.tsv", separator="\t", schema_overrides={"code": pl.String, "system": pl.String,
                                                                                 "description": pl.String, "seen": pl.Boolean})
        encoder = AutoModel.from_pretrained(path / "encoder")
        if device:
            encoder = encoder.to(device)
        if len(tensors["text_code"]) != len(tensors["text_embeddings"]) or int(tensors["text_code"].max()) >= len(codes):
            raise ClemError(f"{path / 'embeddings.safetensors'}: does not match {path / 'codes.tsv'}")
        return cls(config, encoder, AutoTokenizer.from_pretrained(path / "encoder"), codes["code"].to_list(),
                   codes["system"].to_list(), codes["description"].fill_null("").to_list(), codes["seen"].to_numpy(),
                   tensors["text_embeddings"], tensors["text_code"])
