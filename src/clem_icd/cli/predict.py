"""`clem-icd predict`: code new notes with a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from clem_icd.cli import options

console = Console(stderr=True, soft_wrap=True)

EXIT_SOME_FAILED = 3
# --format codiesp is scored by MAP over each note's ranking (the CodiEsp-D/P scorer), so it
# defaults to a ranking rather than the tuned threshold's choice (~10 codes a note): threshold 0,
# capped at this many codes. Measured on CodiEsp dev (docs/results.md), CodiEsp-D MAP is 0.291
# at the tuned threshold, 0.393 with 100 codes a note, 0.399 with 300 and 0.400 with 1,000
# (32 KB a note); deeper ranks add nothing measurable.
CODIESP_TOP_K = 1000


def predict(
    model: Path = typer.Option(..., "--model", "-m", help="Trained model folder (clem-icd train), "
                               "CLEM-ICD or TF-IDF, or a fused one (clem-icd fuse)."),
    inputs: list[str] = typer.Argument(None, metavar="[INPUT]...", help="Text files (one note each, id = "
                                       "file name without .txt), folders of them, JSONL / CSV / TSV / "
                                       "Parquet files with id and text fields, or '-' for stdin (JSONL if "
                                       "its first line is a JSON object, else one note). Default: stdin."),
    top_k: int = typer.Option(None, "--top-k", "-k", help="At most K codes per note (best first). Default: "
                              f"no cap, except {CODIESP_TOP_K} for --format codiesp."),
    threshold: float = typer.Option(None, "--threshold", "-t", help="Report codes with a score above T "
                                    "(the probability; a rank score for a model fused by rrf) (default: the threshold tuned on val when the model was trained; 0 for "
                                    "--format codiesp). --threshold 0 --top-k 10 gives the 10 best codes of "
                                    "every note."),
    explain: str = typer.Option(None, "--explain", "-e", help="Add evidence spans per code: 'attention' "
                                "(label attention, free), 'attingrad' (attention x input gradient, Edin et "
                                "al. 2024; one backward pass per code) or 'inputxgrad'."),
    format: str = typer.Option("jsonl", "--format", "-f", help="jsonl (one JSON object per note), fhir (a "
                               "FHIR R4 Bundle of Condition / Procedure resources), codiesp (CodiEsp-D/P "
                               f"ranking TSV: by default each note's {CODIESP_TOP_K} best codes at threshold 0, "
                               "since the official scorer computes MAP over the ranking and the tuned threshold "
                               "would cut it short; ranks past 1,000 add nothing measurable) or "
                               "codiesp-x (CodiEsp-X TSV, one line per evidence span; needs --explain)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output file (written to a temporary file, then "
                             "renamed). Default: stdout."),
    id_field: str = typer.Option("id", "--id-field", help="Id field of JSONL / CSV / Parquet input."),
    text_field: str = typer.Option("text", "--text-field", help="Text field of JSONL / CSV / Parquet input."),
    window_stride: int = typer.Option(None, "--window-stride", help="Read notes longer than the model's "
                                      "max_length as overlapping windows starting every N tokens; each "
                                      "code's probability is its maximum over the windows. N is at most "
                                      "the window (max_length minus the special tokens), so no token is "
                                      "skipped. Default: truncate (as in training) and mark the note "
                                      "'truncated'."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Notes per forward pass (sorted by length); "
                                   "ignored with --max-batch-tokens."),
    max_batch_tokens: int = typer.Option(None, "--max-batch-tokens", help="Batch by a token budget instead of "
                                         "--batch-size: as many notes (windows) per forward pass as fit, notes "
                                         "x the longest one's tokens <= N; a longer note goes alone. Memory then "
                                         "stays even when note lengths vary (e.g. 16384: two 8,192-token notes "
                                         "or many short ones)."),
    evidence_threshold: float = typer.Option(None, "--evidence-threshold", help="A word is evidence when "
                                             "it holds at least this share of the code's attribution. Default: "
                                             "per method, tuned on CodiEsp-X (attention 0.03, attingrad 0.10, "
                                             "inputxgrad 0.05)."),
    evidence_words: int = typer.Option(10, "--evidence-words", help="At most this many evidence words "
                                       "per code (adjacent words merge into one span)."),
    max_spans: int = typer.Option(5, "--max-spans", help="At most this many evidence spans per code."),
    unseen_codes: bool = typer.Option(False, "--unseen-codes", help="Also report codes without a training "
                                      "example (any code of ICD-10-CM / -PCS, e.g. a new release's), scored by "
                                      "the model folder's description matcher (build it with clem-icd match); "
                                      "such codes say \"source\": \"description match\" and their evidence "
                                      "is the passage that matched."),
    device: str = options.DEVICE,
    precision: str = options.PRECISION,
) -> None:
    """Code notes: each note gets its codes with system, description, score (and probability, when the
    model's scores are probabilities) and, with
    --explain, evidence spans {start, end, score, text}: character offsets into the note as given
    (text is exactly the note's characters from start to end). Records that cannot be coded (empty, not UTF-8, binary, missing id or text,
    duplicate id) get {"id", "error"} and the others are coded; the exit status is then 3."""
    import torch

    from clem_icd.errors import ClemError
    from clem_icd.inference.inputs import count_notes, read_notes
    from clem_icd.inference.predictor import PredictOptions
    from clem_icd.inference.run import code_records
    from clem_icd.inference.writers import RecordWriter, check_format
    from clem_icd.loading import load_model
    from clem_icd.progress import progress_bar

    check_format(format)  # before the model loads
    if format == "codiesp-x" and not explain:
        raise ClemError("--format codiesp-x writes evidence spans: add --explain attingrad (or attention)")
    if not inputs and sys.stdin.isatty():
        raise ClemError("no input: give text files, folders, JSONL/CSV/Parquet files, or pipe notes to stdin")
    if format == "codiesp":  # a ranking by default (see CODIESP_TOP_K); a given option still wins
        threshold = 0.0 if threshold is None else threshold
        top_k = CODIESP_TOP_K if top_k is None else top_k
    options = PredictOptions(threshold=threshold, top_k=top_k, explain=explain, window_stride=window_stride,
                             batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                             evidence_threshold=evidence_threshold,
                             evidence_words=evidence_words, max_spans=max_spans, precision=precision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = load_model(model, device=device, unseen_codes=unseen_codes).note_predictor(options)

    failed = coded = 0
    records = read_notes(inputs or [], id_field=id_field, text_field=text_field)
    try:
        with RecordWriter(out, format) as writer, progress_bar("coding notes", count_notes(inputs or [])) as update:
            for record in code_records(predictor, records, progress=update):
                writer.write(record)
                if "error" in record:
                    failed += 1
                    if format.startswith("codiesp"):
                        console.print(f"error: {record['error']}", markup=False, highlight=False)
                else:
                    coded += 1
    except torch.OutOfMemoryError:
        setting, value = ("--batch-size", batch_size) if max_batch_tokens is None else ("--max-batch-tokens", max_batch_tokens)
        raise ClemError(f"out of {device} memory at {setting} {value}"
                        f"{' with --explain ' + explain if explain else ''}: try a smaller {setting}") from None
    console.print(f"coded {coded} note(s)" + (f"; {failed} record(s) could not be coded" if failed else "")
                  + (f" -> {out}" if out else ""), markup=False, highlight=False)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
