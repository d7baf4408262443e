"""The ``slade`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from slade.errors import DataError, SladeError

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
    table = Table("stage", *keys, title="retrieval on the test classes")
    for stage, values in metrics.items():
        table.add_row(stage, *(f"{values[k]:.4f}" if k in values else "" for k in keys))
    return table


# The demo's config ships inside the package, so `slade demo` works from any directory.
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def _run(config_path: Path | None, out: Path, overrides: list[str], until: str | None,
         force: bool) -> None:
    from slade.config import load_config
    from slade.pipeline import run

    config = load_config(config_path, overrides)
    metrics = run(config, out, until=until, force=force)
    console.print(_metrics_table(metrics))
    console.print(f"run directory: {out}")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")],
    overrides: SetOption = None,
    until: Annotated[str | None, typer.Option(
        help="Stop after this stage: pretrain, teacher, student.")] = None,
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
    args = [_load_array(query, "query"), _load_array(query_labels, "query labels")]
    if gallery is not None:
        args += [_load_array(gallery, "gallery"), _load_array(gallery_labels, "gallery labels")]
    metrics = evaluate_embeddings(*args, ks=ks)
    for name, value in metrics.items():
        print(f"{name}\t{value:.6f}")
    if out is not None:
        write_json(out, metrics)


@app.command()
def embed(
    checkpoint: Annotated[Path, typer.Argument(help="A model.pt written by any stage.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npy (n x d float32).")],
    batch_size: int = 256,
) -> None:
    """Embed images with a trained model; the image list is written beside OUT as .txt."""
    from slade.data.folders import IMAGE_EXTENSIONS
    from slade.inference import load_embedder
    from slade.io import save_npy, write_text

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    vectors = load_embedder(checkpoint).embed([str(f) for f in files], batch_size=batch_size)
    save_npy(out, vectors)
    write_text(out.with_suffix(".txt"), "".join(f"{f}\n" for f in files))
    console.print(f"{len(files)} images -> {out} ({vectors.shape[0]} x {vectors.shape[1]})")


def main() -> None:
    try:
        app()
    except SladeError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
