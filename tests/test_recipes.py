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
    with pytest.raises(ClemError, match="'optim.learning_rate': got 'fast' \\(str\\), expected a number"):
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


def test_a_capped_warm_up_is_said_and_an_uncapped_one_is_not():
    import torch

    from clem_icd.training.recipe import OptimSettings
    from clem_icd.training.trainer import learning_rate_schedule

    def said(warmup_steps: int, total: int) -> list[str]:
        lines: list[str] = []
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        learning_rate_schedule(optimizer, OptimSettings(warmup_steps=warmup_steps), total, lines.append)
        return lines

    assert said(8, 80) == []  # 8 <= 80 // 10
    (line,) = said(500, 120)
    assert "optim.warmup_steps 500 is capped" in line and "120 optimizer steps" in line and "12 steps" in line


@pytest.mark.parametrize("processes", [1, 2, 4, 8])
def test_the_demo_recipe_batches_by_notes_on_any_process_count_that_divides_its_batch(processes):
    """By notes, data.batch_size = notes per pass x processes x passes accumulated, with notes per
    pass the largest divisor of the process's share up to data.micro_batch_size (the demo recipe
    as shipped launches on 2 CPU processes without an override)."""
    from clem_icd.training.trainer import _micro_batching

    data = load_recipe("demo").data
    lines: list[str] = []
    micro, accumulation = _micro_batching(data, processes, lines.append)
    assert micro * processes * accumulation == data.batch_size
    assert 1 <= micro <= data.micro_batch_size
    best = max(m for m in range(1, data.micro_batch_size + 1) if (data.batch_size // processes) % m == 0)
    assert micro == best
    assert bool(lines) == (micro != data.micro_batch_size)
    if lines:
        assert f"data.micro_batch_size={micro}" in lines[0]


def test_a_batch_the_processes_cannot_share_names_the_value_to_give():
    from clem_icd.training.trainer import _micro_batching

    data = load_recipe(None, ["data.batch_size=10", "data.micro_batch_size=2", "data.max_batch_tokens=null"]).data
    with pytest.raises(ClemError, match=r"data.batch_size 10 .* not a multiple of the 4 processes: "
                                        r"give data.batch_size=8"):
        _micro_batching(data, 4, print)


def test_an_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ClemError, match="optim: schedule must be one of linear, cosine, constant, got 'step'"):
        load_recipe(None, ["optim.schedule=step"])


@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=16.0", "got 16.0 (float), expected a whole number"),
    ("data.batch_size='16.5'", "got '16.5' (str), expected a whole number"),
    ("data.batch_size=true", "got True (bool), expected a whole number"),
    ("data.length_grouping='false'", "got 'false' (str), expected true or false"),  # "false" is truthy
    ("data.length_grouping='yes'", "got 'yes' (str), expected true or false"),
    ("data.length_grouping=0", "got 0 (int), expected true or false"),
    ("data.max_batch_tokens=1e4", "got '1e4' (str), expected a whole number or null"),
    ("optim.learning_rate=ten", "got 'ten' (str), expected a number"),
    ("optim.learning_rate=false", "got False (bool), expected a number"),
    ("optim.warmup_steps=ten", "got 'ten' (str), expected a whole number"),
    ("model.encoder=123", "got 123 (int), expected a string"),
    ("model.encoder_config=[1]", "got [1] (list), expected a mapping of keys to values or null"),
    ("train.trackers=tensorboard", "got 'tensorboard' (str), expected a list of strings"),
    ("train.trackers=[1]", "'train.trackers', item 0: got 1 (int), expected a string"),
    ("train.gradient_checkpointing=1", "got 1 (int), expected true or false"),
])
def test_values_of_the_wrong_type_stop_with_one_line_naming_the_key(override, expected, tmp_path):
    key = override.partition("=")[0]
    with pytest.raises(ClemError) as error:
        load_recipe(None, [override])
    message = str(error.value)
    assert message.startswith(f"override '{override}': recipe key '{key}") and expected in message
    assert "\n" not in message
    # The same value in a recipe file: the error names the file.
    section, _, field = key.partition(".")
    recipe = write(tmp_path / "r.yaml", f"{section}:\n  {field}: {override.partition('=')[2]}\n")
    with pytest.raises(ClemError) as error:
        load_recipe(recipe)
    assert str(error.value).startswith(f"{recipe}: recipe key '{key}") and expected in str(error.value)


def test_what_yaml_makes_hard_to_spell_is_still_read(tmp_path):
    recipe = load_recipe(None, ["optim.learning_rate=1e-4", "optim.max_grad_norm=2", "data.batch_size='16'",
                                "data.max_batch_tokens=null", "train.mixed_precision=no",
                                "model.encoder_config={model_type: bert}"])
    assert recipe.optim.learning_rate == 1e-4  # YAML 1.1 reads 1e-4 (no dot) as a string
    assert isinstance(recipe.optim.max_grad_norm, float) and recipe.optim.max_grad_norm == 2.0
    assert recipe.data.batch_size == 16 and recipe.data.max_batch_tokens is None
    assert recipe.train.mixed_precision == "no"  # YAML 1.1 reads `no` as false
    assert recipe.model.encoder_config == {"model_type": "bert"}


@pytest.mark.parametrize("override, expected", [
    ("model.C=ten", "recipe key 'model.C': got 'ten' (str), expected a number"),
    ("model.sublinear_tf='false'", "recipe key 'model.sublinear_tf': got 'false' (str), expected true or false"),
    ("model.min_df=2.5", "recipe key 'model.min_df': got 2.5 (float), expected a whole number"),
    ("model.ngram_range=1", "recipe key 'model.ngram_range': got 1 (int), expected a list of whole numbers"),
    ("model.ngram_range=[2, 1]", "recipe key 'model.ngram_range': got [2, 1]"),
])
def test_tfidf_options_are_type_checked_too(override, expected):
    with pytest.raises(ClemError) as error:
        load_recipe(None, ["model.kind=tfidf", override])
    assert str(error.value).startswith(f"override '{override}': {expected}") and "\n" not in str(error.value)
    assert load_recipe(None, ["model.kind=tfidf", "model.C=1", "model.tol=1e-3"]).model["C"] == 1.0
