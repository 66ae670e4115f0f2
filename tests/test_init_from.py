"""`clem-icd train --init-from MODEL`: a trained coder extended to a dataset's codes scores its
own codes exactly as before, starts its new codes from their descriptions and their training
prevalence, refuses a recipe or dataset its weights cannot continue with in one line, and
trains end to end."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from model_fixtures import minilm_path, tiny_bert

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.errors import ClemError
from clem_icd.model import ICDCoder
from clem_icd.model.config import CoderSettings
from clem_icd.training.init_from import label_space, starting_coder
from clem_icd.training.trainer import init_output_bias

ABSENT = "Z99.89"  # a code of the old model that the new dataset lacks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("init_from") / "data12"
    make_synthetic_dataset(path, n_documents=80, n_codes=12, seed=1)
    return path


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("init_from_small") / "data10"
    make_synthetic_dataset(path, n_documents=80, n_codes=10, seed=3)
    return path


def settings(**extra) -> CoderSettings:
    values = dict(encoder=str(minilm_path()), encoder_config=tiny_bert(), max_length=128, chunk_size=64,
                  attention_dim=16)
    return CoderSettings(**{**values, **extra})


def old_model(folder, dataset: PreparedDataset, head: str):
    """A saved coder over part of the dataset's codes, in another order, plus one code the
    dataset lacks; every head weight random (non-zero biases), so nothing matches by chance."""
    codes = dataset.code_list
    old_codes = [ABSENT, *reversed(codes[3:])]
    coder = ICDCoder.from_encoder(str(minilm_path()), old_codes, encoder_config=tiny_bert(), head=head,
                                  max_length=128, chunk_size=64, attention_dim=16,
                                  code_systems=["icd10cm"] * len(old_codes),
                                  descriptions=["some condition"] + ["" for _ in old_codes[1:]])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in coder.head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    coder.save_pretrained(folder)
    return old_codes


def test_label_space_keeps_the_model_codes_in_order_then_adds_the_new():
    codes, added = label_space(["B", "A", "C"], ["A", "D", "B", "E"])
    assert codes == ["B", "A", "C", "D", "E"] and added == [3, 4]
    assert label_space(["A"], ["A"]) == (["A"], [])


@pytest.mark.parametrize("head", ["laat", "cross"])
def test_extended_model_scores_kept_codes_exactly_and_new_codes_start_from_descriptions(corpus, tmp_path, head):
    dataset = PreparedDataset.load(corpus)
    folder = tmp_path / "old"
    old_codes = old_model(folder, dataset, head)
    torch.manual_seed(0)
    extended, added = starting_coder(settings(head=head), dataset, folder)
    new_codes = [c for c in dataset.code_list if c not in old_codes]
    assert extended.codes == [*old_codes, *new_codes] and len(new_codes) == 3
    assert added == list(range(len(old_codes), len(extended.codes)))
    assert extended.config.descriptions[len(old_codes):] == [
        dataset.codes.filter(dataset.codes["code"] == c)["description"][0] for c in new_codes]

    # Every weight the kept codes' scores read is the original's, bit for bit, so the scores
    # agree up to the matmuls' rounding (BLAS blocks a product of 10 label rows differently from
    # one of 13: float32 scores differ in the last bit): compared in float64, to 1e-12.
    original = ICDCoder.from_pretrained(folder)
    for name, tensor in original.state_dict().items():
        carried = extended.state_dict()[name]
        assert torch.equal(carried[:len(old_codes)] if carried.shape != tensor.shape else carried, tensor), name
    batch = original.tokenizer(dataset.documents["text"].to_list()[:4], padding=True, truncation=True,
                               max_length=128, return_tensors="pt")
    with torch.no_grad():
        before = original.double()(batch["input_ids"], batch["attention_mask"])
        after = extended.eval().double()(batch["input_ids"], batch["attention_mask"])
        extended.float()
    assert after.shape == (4, len(extended.codes))
    torch.testing.assert_close(after[:, :len(old_codes)], before, rtol=0, atol=1e-12)

    # Each new code's query from its description, encoded alone (no batch neighbours): the
    # mean of the encoder's states over its tokens, in the head's query space.
    descriptions = extended.config.descriptions[len(old_codes):]
    with torch.no_grad():
        embeddings = []
        for text in descriptions:
            tokens = extended.tokenizer(text, return_tensors="pt")
            embeddings.append(extended.encoder(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"]).last_hidden_state[0].mean(0))
        embeddings = torch.stack(embeddings)
        rows = slice(len(old_codes), None)
        if head == "laat":
            queries, expected = extended.head.second.weight[rows], torch.tanh(extended.head.first(embeddings))
            outputs = extended.head.output_weight[rows]
            torch.testing.assert_close(outputs / outputs.norm(dim=-1, keepdim=True),
                                       embeddings / embeddings.norm(dim=-1, keepdim=True), rtol=0, atol=1e-5)
        else:
            queries, expected = extended.head.queries[rows], extended.head.key(embeddings)
            torch.testing.assert_close(queries.norm(dim=-1), torch.full((3,), math.sqrt(16.0)))
        torch.testing.assert_close(queries / queries.norm(dim=-1, keepdim=True),
                                   expected / expected.norm(dim=-1, keepdim=True), rtol=0, atol=1e-5)


def test_only_the_new_codes_output_bias_is_set_from_prevalence(corpus, tmp_path):
    dataset = PreparedDataset.load(corpus)
    folder = tmp_path / "old"
    old_codes = old_model(folder, dataset, "laat")
    extended, added = starting_coder(settings(), dataset, folder)
    trained_bias = extended.head.output_bias.detach().clone()

    class Notes:  # what init_output_bias reads of the training split: label indices per note
        labels = [[0, added[0]], [added[0]], [added[1], 2], []]

        def __len__(self):
            return len(self.labels)

    init_output_bias(extended, Notes(), added)
    bias = extended.head.output_bias.detach()
    assert torch.equal(bias[:len(old_codes)], trained_bias[:len(old_codes)])
    counts = {added[0]: 2, added[1]: 1, added[2]: 0}
    for label, count in counts.items():
        prevalence = (count + 0.1) / (4 + 0.2)
        assert bias[label].item() == pytest.approx(math.log(prevalence / (1 - prevalence)), rel=1e-6)


def test_a_recipe_or_dataset_the_weights_cannot_continue_is_refused_in_one_line(corpus, tmp_path):
    dataset = PreparedDataset.load(corpus)
    folder = tmp_path / "old"
    old_model(folder, dataset, "laat")
    for wrong, named in ((settings(head="cross"), "model.head ('cross' in the recipe, 'laat' in the model)"),
                         (settings(attention_dim=8), "model.attention_dim (8 in the recipe, 16 in the model)"),
                         (settings(encoder_config={**tiny_bert(), "hidden_size": 64, "intermediate_size": 128}),
                          "model.encoder_config.hidden_size (64 in the recipe, 32 in the model)")):
        with pytest.raises(ClemError) as refused:
            starting_coder(wrong, dataset, folder)
        assert "\n" not in str(refused.value) and named in str(refused.value), str(refused.value)
    # max_length and chunk_size are the recipe's: they change no weight
    coder, _ = starting_coder(settings(max_length=96, chunk_size=32), dataset, folder)
    assert (coder.config.max_length, coder.config.chunk_size) == (96, 32)

    cleaned = tmp_path / "cleaned"
    shutil.copytree(corpus, cleaned)
    manifest = json.loads((cleaned / "manifest.json").read_text())
    manifest["options"]["clean_text"] = True
    (cleaned / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ClemError) as refused:
        starting_coder(settings(), PreparedDataset.load(cleaned), folder)
    message = str(refused.value)
    assert "\n" not in message and "text cleaning 'none'" in message and "'edin2023'" in message
    with pytest.raises(ClemError, match="no config.json"):
        starting_coder(settings(), dataset, tmp_path / "nowhere")


def overrides(**extra) -> list[str]:
    values = {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(tiny_bert()),
              "model.max_length": 128, "model.chunk_size": 64, "model.attention_dim": 16,
              "data.batch_size": 8, "data.micro_batch_size": 8, "data.eval_batch_size": 16,
              "optim.learning_rate": "3e-3", "optim.head_learning_rate": "3e-2", "optim.warmup_steps": 0,
              "train.epochs": 1, "train.mixed_precision": "no", **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_train_init_from_end_to_end(small_corpus, corpus, tmp_path, run):
    first = tmp_path / "first"
    code, _, err = run("train", "--data", small_corpus, "--output", first, *overrides())
    assert code in (0, None), err
    old_codes = json.loads((first / "config.json").read_text())["codes"]
    assert len(old_codes) == 10

    tuned = tmp_path / "tuned"
    code, _, err = run("train", "--data", corpus, "--output", tuned, "--init-from", first, *overrides())
    assert code in (0, None), err
    config = json.loads((tuned / "config.json").read_text())
    dataset_codes = PreparedDataset.load(corpus, text=False).code_list
    assert config["codes"][:10] == old_codes
    assert sorted(config["codes"][10:]) == sorted(set(dataset_codes) - set(old_codes)) and len(config["codes"]) == 12
    inputs = json.loads((tuned / "train_inputs.json").read_text())
    assert inputs["init_from"]["path"] == str(first)
    log = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["train_loss"])
    scores = ICDCoder.from_pretrained(tuned).predict_proba(["Admitted with pneumonia."])
    assert scores.shape == (1, 12)

    # The recipe must describe the model's architecture: refused in one line, nothing written.
    refused = tmp_path / "refused"
    code, _, err = run("train", "--data", corpus, "--output", refused, "--init-from", first,
                       *overrides(**{"model.head": "cross"}))
    assert code == 2 and err.count("\n") == 1 and "model.head" in err and "train_config.json" in err
    assert not refused.exists()
