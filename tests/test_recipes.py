"""Recipes: sections, inheritance, dotted overrides, the error for old flat recipes, the recipes
shipped with the package, and one definition of each model option."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from clem_icd.errors import ClemError
from clem_icd.model.config import CoderSettings, ICDCoderConfig
from clem_icd.training.recipe import (
    SECTION_TYPES,
    build_recipe,
    load_recipe,
    packaged_recipes,
    read_recipe,
)


def write(path, text: str):
    path.write_text(text)
    return path


def test_sections_inheritance_and_dotted_overrides(tmp_path):
    base = write(tmp_path / "base.yaml", "model:\n  head: cross\n  max_length: 1024\n"
                 "optim:\n  learning_rate: 1e-4\n  warmup_steps: 7\ntrain:\n  epochs: 3\n")
    child = write(tmp_path / "child.yaml", "inherit: base.yaml\nmodel:\n  max_length: 2048\n"
                  "train:\n  epochs: 9\n")
    recipe = load_recipe(child, ["optim.learning_rate=3e-5", "train.trackers=[tensorboard]", "model.chunk_size=512"])
    # the child overrides key by key; keys it does not name come from the parent
    assert (recipe.model.head, recipe.model.max_length, recipe.model.chunk_size) == ("cross", 2048, 512)
    assert (recipe.optim.learning_rate, recipe.optim.warmup_steps) == (3e-5, 7)
    assert (recipe.train.epochs, recipe.train.trackers) == (9, ["tensorboard"])
    assert isinstance(load_recipe(base).optim.learning_rate, float)  # YAML reads 1e-4 as a string
    assert recipe.kind == "clem_icd" and recipe.data == SECTION_TYPES["data"]()  # defaults filled in
    # the resolved recipe round-trips through its dict form
    assert build_recipe(recipe.to_dict()) == recipe


def test_recipe_errors_name_the_key_and_the_file(tmp_path):
    recipe = write(tmp_path / "r.yaml", "optim:\n  learning_rat: 1\n")
    with pytest.raises(ClemError, match=r"r.yaml: unknown key\(s\) in 'optim': learning_rat"):
        load_recipe(recipe)
    with pytest.raises(ClemError, match="'optim.learning_rate': 'fast' is not a number"):
        load_recipe(None, ["optim.learning_rate=fast"])
    with pytest.raises(ClemError, match="multiple of micro_batch_size"):
        load_recipe(None, ["data.batch_size=10", "data.micro_batch_size=4"])
    with pytest.raises(ClemError, match="write optim.learning_rate=3e-5"):
        load_recipe(None, ["learning_rate=3e-5"])  # undotted: says where the key lives
    with pytest.raises(ClemError, match="unknown section 'optimizer'"):
        load_recipe(None, ["optimizer.learning_rate=1"])
    with pytest.raises(ClemError, match="head must be one of laat, cross"):
        load_recipe(None, ["model.head=mlp"])
    with pytest.raises(ClemError, match="model.kind must be one of"):
        load_recipe(None, ["model.kind=svm"])
    with pytest.raises(ClemError, match="unknown TF-IDF option"):
        load_recipe(None, ["model.kind=tfidf", "model.head=laat"])
    loop = write(tmp_path / "loop.yaml", "inherit: loop.yaml\n")
    with pytest.raises(ClemError, match="loops back"):
        load_recipe(loop)
    with pytest.raises(ClemError, match="not a shipped recipe"):
        load_recipe("codiesp/no_such_recipe")


def test_old_flat_recipe_gets_one_error_saying_how_to_update(tmp_path):
    old = write(tmp_path / "old.yaml", "model: clem_icd\nencoder: x\nhead: laat\nlearning_rate: 1e-4\n"
                "epochs: 5\nbatch_size: 8\n")
    with pytest.raises(ClemError) as error:
        load_recipe(old)
    message = str(error.value)
    assert "old.yaml" in message and "flat recipe" in message and "\n" not in message
    for move in ("model: clem_icd → model.kind: clem_icd", "encoder → model.encoder", "head → model.head",
                 "learning_rate → optim.learning_rate", "epochs → train.epochs", "batch_size → data.batch_size"):
        assert move in message


def test_tfidf_recipe_takes_its_options_in_the_model_section(tmp_path):
    recipe = load_recipe(write(tmp_path / "t.yaml", "model:\n  kind: tfidf\n  C: 10\n  min_df: 1\n"))
    assert recipe.kind == "tfidf"
    assert recipe.model["C"] == 10 and recipe.model["min_df"] == 1 and recipe.model["max_features"] == 100_000


def test_every_shipped_recipe_is_valid_by_name_and_by_path():
    shipped = packaged_recipes()
    assert {"demo", "codiesp/minilm_cross_desc", "mimic/clem_modernbert_base", "mimic/plm_icd_roberta_pm",
            "codiesp/tfidf", "mimic/tfidf"} <= set(shipped)
    for name, path in shipped.items():
        recipe = load_recipe(name)  # raises on an unknown key or a bad value
        assert load_recipe(path) == recipe  # by name or by path, the same recipe


def test_variants_say_only_what_differs():
    """A variant file holds only the keys that differ from what it inherits."""
    for name, path in packaged_recipes().items():
        own = yaml.safe_load(path.read_text())
        parent = own.pop("inherit", None)
        if parent is None:
            continue
        inherited = read_recipe((path.parent / parent).resolve())
        for section, keys in own.items():
            for key, value in keys.items():
                assert inherited.get(section, {}).get(key, "<unset>") != value, f"{name}: {section}.{key} repeats its parent"


def test_one_definition_of_each_model_option():
    """The recipe's model section and the saved coder config share CoderSettings' fields: a model
    option is defined once (ICDCoderConfig only adds what training derives from the data)."""
    settings = set(CoderSettings.field_names())
    assert settings <= {f.name for f in dataclasses.fields(ICDCoderConfig)}
    # the other sections do not repeat a model option
    for cls in SECTION_TYPES.values():
        assert not settings & {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_learning_rate_schedules_follow_their_formula(schedule):
    """Every step's rate against the formula, written out here: warm-up capped at 10% of the steps."""
    import math

    import torch

    from clem_icd.training.recipe import OptimSettings
    from clem_icd.training.trainer import learning_rate_schedule

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 2e-4}])
    total, warmup = 50, 5  # warmup_steps 8 is capped at 50 // 10
    scheduler = learning_rate_schedule(optimizer, OptimSettings(learning_rate=2e-4, warmup_steps=8, schedule=schedule), total)
    for step in range(total):
        if step < warmup:
            expected = step / warmup
        else:
            progress = (step - warmup) / (total - warmup)
            expected = {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "constant": 1.0}[schedule]
        assert scheduler.get_last_lr()[0] == pytest.approx(2e-4 * expected, abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_an_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ClemError, match="optim: schedule must be one of linear, cosine, constant, got 'step'"):
        load_recipe(None, ["optim.schedule=step"])
