"""The ``slade`` command line."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slade.errors import PREEMPTED_EXIT, DataError, Preempted, SladeError

app = typer.Typer(
    add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
    help="SLADE: semi-supervised metric learning with unlabeled images from another source.",
)
console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: --set teacher.lr=3e-4 (repeatable)."),
]


def _metrics_table(metrics: dict[str, dict]) -> Table:
    keys: list[str] = []
    for values in metrics.values():
        keys += [k for k, v in values.items() if isinstance(v, float) and k not in keys
                 and (k.startswith("recall@") or k in ("map@r", "r_precision", "nmi"))]
    # Short headers (R@1, MAP@R...) so the table fits an 80-column terminal or log.
    short = {"map@r": "MAP@R", "r_precision": "R-Prec", "nmi": "NMI"}
    table = Table("stage", *(short.get(k, k.replace("recall@", "R@")) for k in keys),
                  title="retrieval on the test classes")
    for stage, values in metrics.items():
        table.add_row(stage, *(f"{values[k]:.4f}" if k in values else "" for k in keys))
    return table


def _gap_table(gap: dict[str, dict]) -> Table:
    table = Table("embedding", "weights", "domain accuracy", "MMD²", "traditional 10%/90%",
                  title="labeled vs unlabeled (domain accuracy 0.5: indistinguishable)")
    for name, g in gap.items():
        traditional = g.get("traditional_accuracy")
        table.add_row(name, g["weights"], f"{g['domain_accuracy']:.3f} ± {g['domain_accuracy_std']:.3f}",
                      f"{g['mmd2']:.4f}", "" if traditional is None else f"{traditional:.3f}")
    return table


# The demo's config ships inside the package, so `slade demo` works from any directory.
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def _run(config_path: Path | None, out: Path, overrides: list[str], until: str | None,
         force: bool) -> None:
    from slade.config import load_config
    from slade.engine import distributed
    from slade.engine.preemption import StopAnywhere
    from slade.pipeline import run

    config = load_config(config_path, overrides)
    with StopAnywhere(f"slade run {out}"):
        metrics = run(config, out, until=until, force=force)
    if not distributed.is_main():  # under torchrun: rank 0 reports
        return
    console.print(_metrics_table({k: v for k, v in metrics.items() if k != "gap"}))
    if "gap" in metrics:
        console.print(_gap_table(metrics["gap"]))
    console.print(f"run directory: {out}")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")],
    overrides: SetOption = None,
    until: Annotated[str | None, typer.Option(
        help="Stop after this stage: pretrain, teacher, pseudo_labels, student (student_round2...).")] = None,
    force: Annotated[bool, typer.Option(help="Continue a run directory made with another config.")] = False,
) -> None:
    """Run every SLADE stage: self-supervised init, teacher, pseudo labels, student."""
    _run(config, out, overrides or [], until, force)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    overrides: SetOption = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
) -> None:
    """`slade run` on the embedded default data (glyphs from matplotlib's fonts, no files needed)."""
    _run(DEMO_CONFIG, out, overrides or [], until, False)


@app.command("tune")
def tune_command(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML) with a tune: section.")],
    trials: Annotated[int, typer.Option(help="Trials that should have ended (a rerun resumes).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Tuning directory (study.db, trial_NNN/...).")],
    overrides: SetOption = None,
) -> None:
    """Tune the tune.params settings on the validation classes (Optuna TPE); best config -> OUT/best.yaml."""
    from slade import run_layout as layout
    from slade.config import load_config
    from slade.tune import TrialResult, tune

    def report(trial: TrialResult, best: TrialResult | None) -> None:
        leader = "" if best is None else f"   (best: {best.run_dir.name}, {best.value:.4f})"
        console.print(escape(trial.describe() + leader), highlight=False, soft_wrap=True)

    best = tune(load_config(config, overrides or []), out, trials, report)
    if best is not None:
        console.print(f"best: {best.describe()}; its config: {out / layout.BEST_CONFIG}", highlight=False,
                      soft_wrap=True)


def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a .npy array ({str(exc).splitlines()[0]})") from None


@app.command()
def evaluate(
    query: Annotated[Path, typer.Argument(help="Query embeddings (.npy, n x d).")],
    query_labels: Annotated[Path, typer.Argument(help="Query labels (.npy, n integers).")],
    gallery: Annotated[Path | None, typer.Option(
        help="Gallery embeddings (.npy); default: each query searches the other queries.")] = None,
    gallery_labels: Annotated[Path | None, typer.Option(help="Gallery labels (.npy).")] = None,
    k: Annotated[str, typer.Option(help="Recall@K values, comma-separated.")] = "1,2,4,8",
    out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
    max_memory_mb: Annotated[float | None, typer.Option(
        help="Bound on the search's working memory (MB); exact at any size.")] = None,
    index: Annotated[str, typer.Option(
        help="exact, or ivf (approximate faiss IndexIVFFlat; reports index_recall).")] = "exact",
    nprobe: Annotated[int, typer.Option(help="Cells searched per query with --index ivf.")] = 32,
    nmi: Annotated[bool, typer.Option(help="Also compute NMI (a k-means of the queries).")] = True,
) -> None:
    """Retrieval metrics (Recall@K, MAP@R, R-Precision, P@1, NMI) of saved embeddings."""
    from slade.evaluation.retrieval import evaluate_embeddings
    from slade.io import write_json

    try:
        ks = tuple(int(v) for v in k.split(",") if v.strip())
    except ValueError:
        raise DataError(f"--k: expected integers separated by commas, got {k!r}") from None
    if (gallery is None) != (gallery_labels is None):
        raise DataError("--gallery and --gallery-labels go together")
    q, ql = _load_array(query, "query"), _load_array(query_labels, "query labels")
    g = None if gallery is None else _load_array(gallery, "gallery")
    gl = None if gallery_labels is None else _load_array(gallery_labels, "gallery labels")
    metrics = evaluate_embeddings(q, ql, g, gl, ks=ks, nmi=nmi, max_memory_mb=max_memory_mb, index=index,
                                  nprobe=nprobe)
    for name, value in metrics.items():
        print(f"{name}\t{value:.6f}")
    if out is not None:
        write_json(out, metrics)


MODEL_HELP = "A model.pt written by any stage, or a .onnx file from `slade export` (runs on onnxruntime)."


@app.command()
def embed(
    checkpoint: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npy (n x d float32).")],
    batch_size: int = 256,
) -> None:
    """Embed images with a trained model; the image list is written beside OUT as .txt."""
    from slade.io import save_npy, write_text
    from slade.retrieval_index import image_files
    from slade.serving import load_embedder

    files = image_files(inputs)
    vectors = load_embedder(checkpoint).embed([str(f) for f in files], batch_size=batch_size)
    save_npy(out, vectors)
    write_text(out.with_suffix(".txt"), "".join(f"{f}\n" for f in files))
    console.print(f"{len(files)} images -> {out} ({vectors.shape[0]} x {vectors.shape[1]})")


data_app = typer.Typer(no_args_is_help=True, help="Inspect the data a config names.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML).")],
    overrides: SetOption = None,
    decode: Annotated[bool, typer.Option(
        help="Decode every image as a run would; --no-decode checks only the lists and files.")] = True,
) -> None:
    """Check a config's data against published counts; list missing or unreadable images.

    Exits 1 when a count differs, an image is missing, or more than data.max_bad_fraction of a
    split is unreadable.
    """
    from slade.config import load_config
    from slade.data.check import check_data

    cfg = load_config(config, overrides or [])
    report = check_data(cfg.data, cfg.seed, decode)
    for line in report.lines():
        print(line)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def tsne(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `slade run`.")],
    points: Annotated[int | None, typer.Option(
        help="Images drawn from each of the labeled set and the pool [default: analysis.points].")] = None,
    perplexity: Annotated[float | None, typer.Option(
        help="t-SNE perplexity [default: analysis.perplexity].")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Sampling and t-SNE seed [default: analysis.seed].")] = None,
) -> None:
    """t-SNE maps, domain-gap numbers, training plots and RUN_DIR/report.html of a run.

    Maps of labeled (coloured by class) vs unlabeled (grey) images under the initial, teacher and
    student embeddings; written to RUN_DIR/analysis/, the gap also to RUN_DIR/metrics.json.
    """
    from slade import run_layout as layout
    from slade.analysis import analyse_run
    from slade.analysis.analyse import read_run_config
    from slade.engine.preemption import StopAnywhere
    from slade.engine.run_lock import RunLock
    from slade.pipeline import record_gap

    given = {"points": points, "perplexity": perplexity, "seed": seed}
    config = read_run_config(run_dir, [f"analysis.{k}={v}" for k, v in given.items() if v is not None])
    with StopAnywhere(f"slade tsne {run_dir}"), RunLock(run_dir):  # one writer per run directory
        gap = analyse_run(run_dir, config.analysis)
        record_gap(run_dir, gap)
    console.print(_gap_table(gap))
    console.print(f"report: {run_dir / layout.REPORT}   figures: {run_dir / layout.ANALYSIS}")


@app.command("index")
def index_command(
    checkpoint: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    gallery: Annotated[list[Path], typer.Argument(help="Gallery images or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write (replaced whole).")],
    skip_bad: Annotated[bool, typer.Option(
        help="Leave undecodable images out (listed in index.json) instead of stopping.")] = False,
    batch_size: int = 256,
) -> None:
    """Embed a gallery with a trained model into a faiss index for `slade query`."""
    from slade.retrieval_index import build_index

    manifest = build_index(checkpoint, gallery, out, batch_size, skip_bad)
    skipped = f", {len(manifest['skipped'])} undecodable skipped" if manifest["skipped"] else ""
    console.print(f"{manifest['images']} images -> {out} ({manifest['dim']}-d){skipped}")


@app.command("query")
def query_command(
    index_dir: Annotated[Path, typer.Argument(help="A folder written by `slade index`.")],
    images: Annotated[list[Path], typer.Argument(help="Query images or folders.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours per query.")] = 10,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the neighbours to a .json or .csv file instead of printing them.")] = None,
) -> None:
    """The k most similar gallery images of each query image (cosine similarity)."""
    import csv
    import io

    from slade.io import write_json, write_text
    from slade.retrieval_index import RetrievalIndex, image_files

    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise DataError(f"--out {out}: give a .json or .csv file")
    files = image_files(images)
    results = RetrievalIndex.load(index_dir).search(files, k)
    rows: list[dict[str, Any]] = [
        {"query": str(f), "rank": n.rank, "image": n.image, "similarity": round(n.similarity, 6)}
        for f, neighbours in zip(files, results, strict=True) for n in neighbours]
    if out is None:
        table = Table("query", "rank", "similarity", "image")
        for column in (table.columns[0], table.columns[3]):
            column.overflow = "fold"  # a path is wrapped, never cut short
        for row in rows:
            table.add_row(row["query"], str(row["rank"]), f"{row['similarity']:.4f}", row["image"])
        Console().print(table)
    elif out.suffix.lower() == ".json":
        write_json(out, rows)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["query", "rank", "image", "similarity"])
        writer.writeheader()
        writer.writerows(rows)
        write_text(out, buffer.getvalue())


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="A model.pt written by any stage.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The file to write: model.onnx, or a TorchScript file.")],
    fmt: Annotated[str, typer.Option(
        "--format", help="onnx (for onnxruntime) or torchscript (for libtorch).")] = "onnx",
) -> None:
    """Export a trained model for serving, its input pipeline stored as metadata in the file.

    `slade embed`, `index` and `query` take the .onnx file and run it on onnxruntime, without torch.
    """
    from slade.serving.export import export_embedder

    spec = export_embedder(checkpoint, out, fmt)
    console.print(f"{checkpoint} -> {out} ({fmt}: (batch, {spec.channels}, {spec.image_size}, "
                  f"{spec.image_size}) images -> {spec.embedding_dim}-d embeddings)")


def _log_to_stderr() -> None:
    """slade's log on stderr, a plain line each: warnings, and what each stage runs with (info)."""
    logger = logging.getLogger("slade")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main() -> None:
    try:
        _main()
    finally:
        # Nothing is left to collect once a command has ended: without this, the interpreter's exit
        # spends seconds walking torch's and timm's objects (measured: benchmarks/graceful_stop.py).
        gc.freeze()


def _main() -> None:
    _log_to_stderr()
    try:
        app()
    except Preempted as exc:  # a checkpoint holds the step: rerunning resumes
        console.print(f"stopped: {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(PREEMPTED_EXIT)
    except SladeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a write outside slade.io the disk refused: the same one line
        from slade.io import disk_error

        error = disk_error(Path(exc.filename or "."), exc) if exc.filename else None
        if error is None:
            raise
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
