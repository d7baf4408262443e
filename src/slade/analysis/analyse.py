"""``slade tsne RUN``: the visual analysis of a run, from the files its stages wrote.

    RUN/analysis/tsne_<embedding>.png          t-SNE map per embedding: initial, teacher, student...
    RUN/analysis/tsne.html                     the same maps, interactive: hover shows the image
    RUN/analysis/training_<stage>.png          loss terms, Recall@1 / MAP@R, mined pairs, mu+ / mu-
    RUN/analysis/basis_similarity_<student>.png   same- vs different-cluster basis similarity
    RUN/analysis/cluster_sizes_<pseudo_labels>.png
    RUN/analysis/gap.json                      the settings, the domain gap of every embedding and
                                               the digests of the stage outputs it was made from
    RUN/report.html                            all of it on one self-contained page, written last

The *initial* embedding is what the teacher started from: the stage-0 weights, or a freshly
initialised network (random, ImageNet weights with ``model.pretrained``, or ``model.weights``)
when stage 0 did not run. Everything is computed before anything is written, and every file is
written atomically, so a failed analysis leaves the previous report whole. The gap goes to
``RUN/metrics.json`` through the pipeline (``slade run``, ``slade tsne``), which alone writes that
file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import torch

from slade import run_layout as layout
from slade.analysis import plots
from slade.analysis.gap import domain_classifier_accuracy, domain_gap
from slade.analysis.images import PRINT_DPI, SCREEN_DPI, figure_png, thumbnail_uri
from slade.analysis.report import FigureSection, Hit, Report, RetrievedQuery, cluster_table, render_report
from slade.analysis.tsne import (
    LABELED_10,
    LABELED_90,
    MapPoints,
    check_points,
    interactive_page,
    plot_map,
    tsne_2d,
)
from slade.config import AnalysisConfig, Config, dump_config, load_config
from slade.data.datasets import ImageDataset
from slade.data.records import ImageSet
from slade.engine.device import resolve_device
from slade.errors import CheckpointError, DataError
from slade.inference import decoder_for
from slade.io import atomic_write, read_json, write_json, write_text
from slade.models.embedder import EmbeddingNet
from slade.stages.common import embed_images, load_model, new_model, stage_outputs

log = logging.getLogger("slade")

# The retrieval browser searches at most this many test images (a uniform sample beyond it).
MAX_TEST_IMAGES = 5000


@dataclass
class EmbeddingSource:
    """One embedding to analyse: its name, where its weights come from, and the saved model if any."""

    name: str
    weights: str
    path: Path | None


def _rounds(config: Config) -> range:
    return range(1, config.student.rounds + 1)


def plan_embeddings(run_dir: Path, config: Config) -> list[EmbeddingSource]:
    """The embeddings a run has so far: initial, then teacher and each student that finished.

    Raises:
        CheckpointError: the run has no finished stage to analyse.
    """
    def has_model(stage: str) -> bool:
        return (run_dir / stage / layout.MODEL).is_file()  # written atomically, when the stage ends

    pretrain, teacher = layout.PRETRAIN, layout.TEACHER
    if not has_model(pretrain) and not has_model(teacher):
        raise CheckpointError(f"{run_dir}: no finished stage with a model ({pretrain}/{layout.MODEL} or "
                              f"{teacher}/{layout.MODEL}): run `slade run` on it first")
    if has_model(pretrain) and config.teacher.init == "pretrain":
        initial = EmbeddingSource("initial", "stage-0 SwAV weights", run_dir / pretrain / layout.MODEL)
    elif config.model.pretrained:
        initial = EmbeddingSource("initial", f"{config.model.backbone} ImageNet weights", None)
    elif config.model.weights:
        initial = EmbeddingSource("initial", f"{config.model.backbone} weights from {config.model.weights}",
                                  None)
    else:
        initial = EmbeddingSource("initial", f"random initialisation (seed {config.seed})", None)
    found = [initial]
    for name in [teacher, *map(layout.student, _rounds(config))]:
        if has_model(name):
            found.append(EmbeddingSource(name, f"{name}/{layout.MODEL}", run_dir / name / layout.MODEL))
    return found


def _load(source: EmbeddingSource, config: Config) -> EmbeddingNet:
    # Without a saved model: the network the teacher started from.
    return new_model(config) if source.path is None else load_model(source.path, config)


def _draw(image_set: ImageSet, n: int, rng: np.random.Generator, config: Config) -> ImageDataset:
    """A uniform sample of ``n`` images (all when fewer), decoded; unreadable ones are left out."""
    chosen = np.sort(rng.choice(len(image_set), min(n, len(image_set)), replace=False))
    return ImageDataset(image_set.subset(chosen), decoder_for(config.data), cache=True,
                        max_bad_fraction=config.data.max_bad_fraction)


def _pixels(dataset: ImageDataset, i: int) -> np.ndarray:
    return dataset[i].permute(1, 2, 0).numpy()


def _class_name(image_set: ImageSet, label: int) -> str:
    return image_set.class_names[label] if 0 <= label < len(image_set.class_names) else str(label)


def read_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The resolved config a run directory was made with (``--set``-style ``overrides`` applied)."""
    if not (Path(run_dir) / layout.CONFIG).is_file():
        raise DataError(f"{run_dir}: not a run directory (no {layout.CONFIG}): give the --out of `slade run`")
    return load_config(Path(run_dir) / layout.CONFIG, overrides)


def analysis_is_current(run_dir: Path, config: Config) -> dict | None:
    """The gap of an earlier analysis when it was made with the run's current settings from the
    stage outputs the run has now (by their ``done.json`` digests)."""
    gap_file, report = run_dir / layout.ANALYSIS / layout.GAP, run_dir / layout.REPORT
    if not gap_file.is_file() or not report.is_file():
        return None
    try:
        saved = read_json(gap_file)
        sources = plan_embeddings(run_dir, config)
        inputs = _inputs(run_dir, config)
    except (ValueError, KeyError, CheckpointError):
        return None
    if (saved.get("settings") != _settings(config.analysis)
            or list(saved.get("gap", {})) != [s.name for s in sources]
            or saved.get("inputs") != inputs):
        return None
    return saved["gap"]


def _inputs(run_dir: Path, config: Config) -> dict[str, dict | None]:
    """What the analysis reads, as the stages recorded it: each stage's output digests."""
    return {stage: stage_outputs(run_dir / stage) for stage in layout.stages(config.student.rounds)}


def _settings(settings: AnalysisConfig) -> dict:
    return {k: v for k, v in asdict(settings).items() if k != "enabled"}


def analyse_run(run_dir: str | Path, settings: AnalysisConfig | None = None) -> dict[str, dict]:
    """Write the figures, the domain gap and ``RUN/report.html`` of the run in ``run_dir``.

    Args:
        run_dir: a directory written by ``slade run``.
        settings: sample size, perplexity, seed...; the run's ``analysis`` section when None.

    Returns:
        ``{embedding: domain gap}``, for ``RUN/metrics.json`` under ``"gap"``.

    Raises:
        CheckpointError: no finished stage to analyse.
        DataError: a labeled set or unlabeled pool of fewer than 2 images, or fewer points than
            t-SNE's perplexity needs.
    """
    analysis = compute_analysis(Path(run_dir), settings)
    analysis.write(Path(run_dir))
    return analysis.gap


@dataclass
class Analysis:
    """Everything the analysis of a run writes, computed before any of it is written."""

    files: dict[str, bytes | str]  # RUN/analysis/<name>
    gap: dict[str, dict]
    record: dict  # RUN/analysis/gap.json
    report: str  # RUN/report.html

    def write(self, run_dir: Path) -> None:
        out = run_dir / layout.ANALYSIS
        for name, content in self.files.items():
            if isinstance(content, bytes):
                atomic_write(out / name, partial(Path.write_bytes, data=content))
            else:
                write_text(out / name, content)
        write_json(out / layout.GAP, self.record)
        write_text(run_dir / layout.REPORT, self.report)  # last: a report always comes with its figures


def compute_analysis(run_dir: Path, settings: AnalysisConfig | None = None) -> Analysis:
    """The analysis of the run in ``run_dir`` (see :func:`analyse_run`), nothing written."""
    from slade.data.build import build_splits

    config = read_run_config(run_dir)
    settings = settings or config.analysis
    sources = plan_embeddings(run_dir, config)
    inputs = _inputs(run_dir, config)
    splits = build_splits(config.data, config.seed)
    sample = _Sample.draw(splits, config, settings)
    embed = partial(embed_images, config, resolve_device(config.device))

    files: dict[str, bytes | str] = {}
    gap, maps, map_figures, pool_embeddings = {}, [], [], {}
    for source in sources:
        log.info("analysis: %s embedding (%s)", source.name, source.weights)
        model = _load(source, config)
        z_l, z_u = embed(model, sample.labeled), embed(model, sample.unlabeled)
        pool_embeddings[source.name] = z_u
        gap[source.name] = {"weights": source.weights, **sample.gap(z_l, z_u, settings.seed)}
        coords = tsne_2d(np.concatenate([z_l, z_u]), settings.perplexity, settings.seed)
        title = f"{source.name} embedding ({source.weights})"
        subtitle = (f"domain accuracy {gap[source.name]['domain_accuracy']:.3f}, "
                    f"MMD² {gap[source.name]['mmd2']:.4f}; {len(z_l)} labeled "
                    f"({len(np.unique(sample.labeled.labels))} classes), {len(z_u)} unlabeled")
        maps.append((title, subtitle, coords))
        figure = plot_map(coords, sample.points, title, subtitle)
        map_figures.append(_render(files, layout.tsne_figure(source.name), figure,
                                   f"t-SNE, {title}: {subtitle}"))
    files[layout.TSNE_PAGE] = interactive_page(maps, sample.points, f"t-SNE maps of {run_dir.name}")

    notes: list[str] = []
    sections = [
        FigureSection("t-SNE: labeled set vs unlabeled pool", map_figures,
                      "Labeled images coloured by class (× a random 10%, + the other 90%: the traditional "
                      "setting's labeled and unlabeled sets), unlabeled pool in grey; t-SNE is given no "
                      f"labels. Interactive version (hover shows the image): {layout.ANALYSIS}/"
                      f"{layout.TSNE_PAGE}.", columns=2),
        FigureSection("Training", _training_figures(run_dir, config, files)),
        _pseudo_label_section(run_dir, config, files, sample.unlabeled, pool_embeddings, notes),
    ]
    final = sources[-1]
    queries = _retrieval_browser(model, splits, config, settings, embed)  # the last model loaded

    metrics_path, summary = run_dir / layout.METRICS, run_dir / layout.DATA_SUMMARY
    stage_metrics = {k: v for k, v in (read_json(metrics_path) if metrics_path.is_file() else {}).items()
                     if k != "gap"}
    html = render_report(Report(
        run_name=run_dir.resolve().name, config_yaml=dump_config(config), stage_metrics=stage_metrics,
        gap=gap, data_summary=read_json(summary) if summary.is_file() else {},
        sections=sections, queries=queries, retrieval_model=final.name, notes=notes))
    return Analysis(files, gap, {"settings": _settings(settings), "gap": gap, "inputs": inputs}, html)


@dataclass
class _Sample:
    """The images every map shows: uniform samples of the labeled set and of the pool."""

    labeled: ImageDataset
    unlabeled: ImageDataset
    points: MapPoints

    @classmethod
    def draw(cls, splits, config: Config, settings: AnalysisConfig) -> _Sample:
        for name, images in (("labeled set", splits.labeled), ("unlabeled pool", splits.unlabeled)):
            if len(images) < 2:
                raise DataError(f"the {name} has {len(images)} image(s): the gap between the labeled set "
                                "and the unlabeled pool needs at least 2 images of each")
        rng = np.random.default_rng(settings.seed)
        labeled = _draw(splits.labeled, settings.points, rng, config)
        unlabeled = _draw(splits.unlabeled, settings.points, rng, config)
        check_points(len(labeled) + len(unlabeled), settings.perplexity,
                     f"the sample ({len(labeled)} labeled + {len(unlabeled)} unlabeled images)")
        names = [f"{_class_name(labeled.image_set, int(y))} — {r.source}"
                 for y, r in zip(labeled.labels, labeled.image_set.records, strict=True)]
        names += unlabeled.image_set.sources
        thumbnails = [thumbnail_uri(_pixels(d, i)) for d in (labeled, unlabeled) for i in range(len(d))]
        return cls(labeled, unlabeled, MapPoints.of(labeled.labels, len(unlabeled), names, thumbnails,
                                                    settings.seed))

    def gap(self, z_l: np.ndarray, z_u: np.ndarray, seed: int) -> dict:
        """The domain gap of one embedding, and the traditional 10% / 90% split's as a baseline."""
        kind = self.points.kind[: len(z_l)]
        traditional = None
        if (kind == LABELED_10).sum() >= 2:
            traditional, _ = domain_classifier_accuracy(z_l[kind == LABELED_10], z_l[kind == LABELED_90],
                                                        seed, ("labeled 10%", "labeled 90%"))
        return {**domain_gap(z_l, z_u, seed), "traditional_accuracy": traditional,
                "labeled_points": len(z_l), "unlabeled_points": len(z_u)}


def _render(files: dict, name: str, fig, caption: str) -> tuple[str, bytes]:
    """Queue ``fig`` as a print-quality PNG file; return its screen copy for the report."""
    files[name] = figure_png(fig, PRINT_DPI)
    return caption, figure_png(fig, SCREEN_DPI)


def _training_figures(run_dir: Path, config: Config, files: dict) -> list[tuple[str, bytes]]:
    figures = []
    for stage in [layout.PRETRAIN, layout.TEACHER, *map(layout.student, _rounds(config))]:
        path = run_dir / stage / layout.LOG
        if not path.is_file():
            continue
        fig = plots.training_figure(plots.read_log(path), stage)
        if fig is not None:
            figures.append(_render(files, layout.training_figure(stage), fig, f"{stage}: training log"))
    return figures


def _pseudo_label_section(run_dir: Path, config: Config, files: dict, unlabeled: ImageDataset,
                          pool_embeddings: dict[str, np.ndarray], notes: list[str]) -> FigureSection:
    from slade.stages.pseudo_labels import PseudoLabels

    figures, stats = [], {}
    for r in _rounds(config):
        student, labels_name = layout.student(r), layout.pseudo_labels(r)
        labels_dir = run_dir / labels_name
        if not (labels_dir / layout.TABLE).is_file():
            continue
        pseudo = PseudoLabels.read(labels_dir / layout.TABLE)
        if (labels_dir / layout.CLUSTERS).is_file():
            stats[labels_name] = read_json(labels_dir / layout.CLUSTERS)
        figures.append(_render(files, layout.cluster_sizes_figure(labels_name),
                               plots.cluster_size_figure(pseudo.labels, labels_name),
                               f"{labels_name}: pseudo-label cluster sizes"))
        if student not in pool_embeddings:
            continue
        figure = _basis_figure(run_dir / student, config, pseudo, unlabeled, pool_embeddings[student], notes)
        if figure is not None:
            figures.append(_render(files, layout.basis_figure(student), figure,
                                   f"{student}: basis similarity of unlabeled pairs, final model"))
    return FigureSection("Pseudo labels and mining", figures, after=cluster_table(stats))


def _basis_figure(student_dir: Path, config: Config, pseudo, unlabeled: ImageDataset, z: np.ndarray,
                  notes: list[str]):
    """The student's basis similarities of the sampled pool, split by pseudo label (None if unknown)."""
    from slade.basis.feature_basis import load_basis
    from slade.mining import MININGS

    name = student_dir.name
    if not MININGS[config.student.mining].trains_basis:
        notes.append(f"{name}: mining {config.student.mining} trains no feature basis: no basis histogram.")
        return None
    if layout.BASIS not in (stage_outputs(student_dir) or {}):
        notes.append(f"{name}: no basis histogram: this stage was finished by a slade that kept its basis "
                     f"only in its training state; delete {name}/{layout.DONE} and rerun `slade run` to "
                     f"write {name}/{layout.BASIS} (the stage finishes again from its last checkpoint "
                     "without training; the stages after it are redone).")
        return None
    try:
        basis = load_basis(student_dir / layout.BASIS)
    except CheckpointError as exc:
        notes.append(f"{name}: no basis histogram, the feature basis is not readable ({exc}).")
        return None
    by_source = dict(zip(pseudo.sources, pseudo.labels.tolist(), strict=True))
    labels = np.array([by_source.get(s, -1) for s in unlabeled.image_set.sources])
    known = labels >= 0
    with torch.no_grad():
        similarity = basis.similarity(torch.from_numpy(z[known])).numpy()
    g = basis.gaussians()
    return plots.basis_similarity_figure(
        similarity, labels[known], g["mu_pos"], g["mu_neg"],
        f"{name}: basis similarity of {int(known.sum())} sampled unlabeled images")


def _retrieval_browser(model: EmbeddingNet, splits, config: Config, settings: AnalysisConfig,
                       embed: Callable[[EmbeddingNet, ImageDataset], np.ndarray]) -> list[RetrievedQuery]:
    """Test queries with their ``top_k`` nearest test (or gallery) images."""
    rng = np.random.default_rng(settings.seed)
    queries_set = _draw(splits.test, MAX_TEST_IMAGES, rng, config)
    same_source = splits.gallery is None
    gallery_set = queries_set if same_source else _draw(splits.gallery, MAX_TEST_IMAGES, rng, config)
    q = embed(model, queries_set)
    g = q if same_source else embed(model, gallery_set)
    k = min(settings.top_k, len(g) - same_source)
    counts = np.bincount(gallery_set.labels[gallery_set.labels >= 0], minlength=1)
    present = np.array([0 <= y < len(counts) and counts[y] > same_source for y in queries_set.labels], bool)
    candidates = np.flatnonzero(present)
    if k < 1 or not len(candidates):
        return []
    chosen = np.sort(rng.choice(candidates, min(settings.queries, len(candidates)), replace=False))
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g))
    similarity, ids = index.search(np.ascontiguousarray(q[chosen]), k + same_source)

    def hit(dataset: ImageDataset, i: int, right: bool = False, sim: float = 1.0) -> Hit:
        return Hit(thumbnail_uri(_pixels(dataset, i)), dataset.image_set.records[i].source,
                   _class_name(dataset.image_set, int(dataset.labels[i])), right, sim)

    result = []
    for row, qi in enumerate(chosen):
        pairs = [(int(j), float(s)) for j, s in zip(ids[row], similarity[row], strict=True)
                 if j >= 0 and not (same_source and j == qi)][:k]
        y = queries_set.labels[qi]
        hits = [hit(gallery_set, j, bool(gallery_set.labels[j] == y), s) for j, s in pairs]
        result.append(RetrievedQuery(hit(queries_set, qi), hits))
    return result
