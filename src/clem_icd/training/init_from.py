"""The coder a training starts from: a new one (the recipe's model section on the dataset's
codes), or, with `clem-icd train --init-from MODEL`, a trained coder extended to the dataset.

Fine-tuning a trained model (`starting_coder` with a model folder):

- Label space: the model's codes in their order, then the dataset's codes it lacks, in the
  dataset's order. The model's codes that this dataset lacks stay (a fine-tuned model keeps what
  it could code); in this dataset they have no positive example, so training only lowers them.
- Weights: the encoder and the head's shared weights as trained; the head's per-label rows
  (`label_parameters` of clem_icd.model.heads: queries, output weights and biases) of the kept
  codes as trained. A new code's query and output weights come from its description (the
  encoder's mean-pooled states of it, as `label_query_init: description` does for a new model;
  the recipe's description_text decides plain or rich) and its output bias from its training
  prevalence (clem_icd.training.trainer.init_output_bias); kept codes keep their trained bias.
  So before any training the extended model scores the kept codes exactly as the model did.
- Architecture: the model's. The recipe's encoder, tokenizer, head and attention_dim (and the
  keys its encoder_config sets) must agree with the model's, since the weights fit only those;
  a disagreement is refused in one line naming the settings. The recipe's max_length,
  chunk_size, attention, attn_implementation and description_text apply (they change no
  weight's shape). label_query_init does not apply: kept codes keep their queries, new ones
  always start from their descriptions.
- Text: the model's text cleaning, which must be the dataset's (a model trained on cleaned notes
  fine-tuned on raw ones would read both wrongly).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.fingerprint import dataset_changes, dataset_record
from clem_icd.errors import ClemError
from clem_icd.model.config import CoderSettings, ICDCoderConfig

# The recipe settings a fine-tuned model takes from the recipe; every other one is the model's.
RECIPE_SETTINGS = ("max_length", "chunk_size", "attention", "attn_implementation", "description_text")
# The settings the model's weights fit: the recipe must agree.
ARCHITECTURE = ("encoder", "tokenizer", "head", "attention_dim")


def dataset_text_cleaning(dataset: PreparedDataset) -> str:
    """What the dataset's notes went through (its manifest's clean_text option)."""
    return "edin2023" if (dataset.manifest.get("options") or {}).get("clean_text") else "none"


def label_space(model_codes: list[str], dataset_codes: list[str]) -> tuple[list[str], list[int]]:
    """(codes, indices of the new ones): the model's codes in order, then the dataset's codes
    the model lacks, in the dataset's order."""
    known = set(model_codes)
    added = [code for code in dataset_codes if code not in known]
    return [*model_codes, *added], list(range(len(model_codes), len(model_codes) + len(added)))


def starting_coder(settings: CoderSettings, dataset: PreparedDataset, init_from: Path | None = None):
    """(coder, the label indices whose output bias training should set from prevalence: None
    for all of them). Without `init_from`: a new coder as the recipe's model section describes
    it, on the dataset's codes. With it: that trained model extended to the dataset's codes
    (module notes)."""
    from clem_icd.model import ICDCoder

    if init_from is None:
        # The recipe's model section as is, plus what the data decides.
        return ICDCoder.from_config(ICDCoderConfig(
            **settings.settings(), codes=dataset.code_list, text_cleaning=dataset_text_cleaning(dataset),
            code_systems=dataset.codes["system"].to_list(),
            descriptions=dataset.codes["description"].to_list())), None
    folder = Path(init_from)
    saved = check_init_from(folder, settings, dataset)
    source = ICDCoder.from_pretrained(folder, settings={key: getattr(settings, key) for key in RECIPE_SETTINGS})
    codes, added = label_space(saved.codes, dataset.code_list)
    rows = {code: i for i, code in enumerate(dataset.code_list)}
    config = replace(source.config, codes=codes, threshold=0.5,  # tuned again at the end
                     code_systems=[*_padded(saved.code_systems, saved.codes),
                                   *(dataset.codes["system"][rows[codes[i]]] for i in added)],
                     descriptions=[*_padded(saved.descriptions, saved.codes),
                                   *(dataset.codes["description"][rows[codes[i]]] or "" for i in added)])
    coder = ICDCoder(config, source.encoder, source.tokenizer)  # a new head, seeded by the caller
    carry_head(source.head, coder.head, len(saved.codes))
    coder.train()
    if added:
        coder.init_label_queries_from_descriptions(added)
    return coder, added


def saved_tokenizer(folder: Path):
    """The tokenizer saved in a model folder, told which one it is by the encoder's config (the
    folder's config.json is ours, model_type clem_icd, which transformers would warn about)."""
    from transformers import AutoConfig, AutoTokenizer

    encoder_config = dict(ICDCoderConfig.load(Path(folder) / "config.json").encoder_config or {})
    return AutoTokenizer.from_pretrained(folder, config=AutoConfig.for_model(encoder_config.pop("model_type"),
                                                                             **encoder_config))


def check_init_from(folder: Path, settings: CoderSettings, dataset: PreparedDataset) -> ICDCoderConfig:
    """The model folder's config, after checking that the recipe and the dataset can continue
    it; refuses in one line what they cannot."""
    config = ICDCoderConfig.load(folder / "config.json") if (folder / "config.json").is_file() else None
    if config is None:
        raise ClemError(f"--init-from {folder}: no config.json there (is it a trained CLEM-ICD model folder?)")
    differing = [f"model.{key} ({getattr(settings, key)!r} in the recipe, {getattr(config, key)!r} in the model)"
                 for key in ARCHITECTURE if getattr(settings, key) != getattr(config, key)]
    differing += [f"model.encoder_config.{key} ({value!r} in the recipe, "
                  f"{(config.encoder_config or {}).get(key)!r} in the model)"
                  for key, value in sorted((settings.encoder_config or {}).items())
                  if (config.encoder_config or {}).get(key) != value]
    if differing:
        hint = (f", or take the recipe it was trained with: --config {folder / 'train_config.json'}"
                if (folder / "train_config.json").is_file() else "")
        raise ClemError(f"--init-from {folder}: the recipe's architecture differs from the model's in "
                        f"{'; '.join(differing)}; its weights fit only its own (set these keys to the model's"
                        f"{hint})")
    cleaning = dataset_text_cleaning(dataset)
    if cleaning != config.text_cleaning:
        raise ClemError(f"--init-from {folder}: the model was trained on text cleaning '{config.text_cleaning}', "
                        f"{dataset.path} has '{cleaning}' (manifest options.clean_text); prepare the data as "
                        "the model's was")
    systems = dict(zip(config.codes, _padded(config.code_systems, config.codes)))
    clashes = [f"{code} ({systems[code]} in the model, {system} in the dataset)"
               for code, system in zip(dataset.code_list, dataset.codes["system"].to_list())
               if systems.get(code) and system and systems[code] != system]
    if clashes:
        raise ClemError(f"--init-from {folder}: codes of another code system in {dataset.path}/codes.tsv: "
                        f"{', '.join(clashes[:3])}{f' and {len(clashes) - 3} more' if len(clashes) > 3 else ''}")
    return config


@torch.no_grad()
def carry_head(old, new, kept: int) -> None:
    """`new` (a head over `kept` or more labels) takes `old`'s shared weights and, for its first
    `kept` labels, `old`'s per-label rows; its other rows stay as they are."""
    state = new.state_dict()
    for name, tensor in old.state_dict().items():
        if name in old.label_parameters:
            state[name][:kept] = tensor
        else:
            state[name] = tensor
    new.load_state_dict(state, strict=True)


def _padded(values: list[str], codes: list[str]) -> list[str]:
    """A per-code list of a config (systems, descriptions), which older configs may leave empty."""
    return list(values) if len(values) == len(codes) else [""] * len(codes)


# ---------------------------------------------------------------------------------- resume


def training_inputs(dataset: PreparedDataset, init_from: Path | None) -> dict:
    """What a training starts from (train_inputs.json in its output folder): the dataset's
    record and the --init-from model (its path and the sha256 of its config.json, which holds
    its codes and tuned threshold)."""
    from clem_icd.data.io import sha256_file

    start = None
    if init_from is not None:
        start = {"path": str(init_from), "config_sha256": sha256_file(Path(init_from) / "config.json")}
    return {"dataset": dataset_record(dataset), "init_from": start}


def input_changes(saved: dict, current: dict, data_dir: Path) -> str | None:
    """Why a resumed training cannot go on with these inputs (one line), or None."""
    changes = dataset_changes(saved.get("dataset") or {}, current["dataset"])
    if changes:
        return (f"--resume: {data_dir} is not the dataset this run started on ({'; '.join(changes)}); "
                "resume with that dataset, or start afresh in another --output")
    old, new = saved.get("init_from"), current["init_from"]
    if old is None and new is not None:
        return "--resume: this run started without --init-from; resume without it"
    if old is not None and new is None:
        return f"--resume: this run started from --init-from {old['path']}; resume with the same --init-from"
    if old is not None and old["config_sha256"] != new["config_sha256"]:
        return (f"--resume: --init-from {new['path']} is not the model this run started from ({old['path']}: "
                f"config.json sha256 {old['config_sha256'][:12]}… → {new['config_sha256'][:12]}…)")
    return None
