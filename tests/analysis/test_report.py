"""The analysis of a finished run: gap numbers, figures, RUN/report.html, and bad input."""

import json
import logging
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from slade import run_layout as layout
from slade.analysis.analyse import analysis_is_current, read_run_config
from slade.analysis.report import FigureSection, Hit, Report, RetrievedQuery, render_report
from slade.cli import app
from slade.config import dump_config
from slade.errors import CheckpointError, DataError
from slade.pipeline import run

EMBEDDINGS = ["initial", "teacher", "student"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"


def test_run_ends_with_the_domain_gap_in_metrics_json(analysed_run):
    metrics = json.loads((analysed_run / layout.METRICS).read_text())
    assert list(metrics) == ["pretrain", "teacher", "student", "gap"]
    gap = metrics["gap"]
    assert list(gap) == EMBEDDINGS
    assert [g["weights"] for g in gap.values()] == ["stage-0 SwAV weights", "teacher/model.pt",
                                                    "student/model.pt"]
    for g in gap.values():
        assert 0.0 <= g["domain_accuracy"] <= 1.0 and 0.0 <= g["traditional_accuracy"] <= 1.0
        assert -0.1 < g["mmd2"] < 2.0 and g["mmd_sigma"] > 0
        assert (g["labeled_points"], g["unlabeled_points"]) == (72, 160)  # the whole tiny sets
    saved = json.loads((analysed_run / layout.ANALYSIS / layout.GAP).read_text())
    assert saved["gap"] == gap and saved["settings"]["perplexity"] == 30.0


def test_analysis_writes_print_quality_maps_and_plots(analysed_run):
    names = sorted(p.name for p in (analysed_run / layout.ANALYSIS).iterdir())
    assert names == ["basis_similarity_student.png", "cluster_sizes_pseudo_labels.png", "gap.json",
                     "training_pretrain.png", "training_student.png", "training_teacher.png",
                     "tsne.html", "tsne_initial.png", "tsne_student.png", "tsne_teacher.png"]
    width, height = Image.open(analysed_run / layout.ANALYSIS / "tsne_teacher.png").size
    assert width > 1800 and height > 1800  # 7 inches at 300 dpi, less the trimmed margins
    assert not list(analysed_run.rglob("*.tmp"))


def test_report_is_one_self_contained_page(analysed_run):
    html = (analysed_run / layout.REPORT).read_text()
    for heading in ("Data", "Retrieval on the test classes", "Domain gap: labeled set vs unlabeled pool",
                    "t-SNE: labeled set vs unlabeled pool", "Training", "Pseudo labels and mining",
                    "Retrieval browser", "Config"):
        assert f"<h2>{heading}</h2>" in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(re.findall(r'<img class="figure"', html)) == 3 + 3 + 2  # maps, training, mining
    assert "Domain-classifier accuracy" in html and "(initial) to" in html
    # 12 queries, each with its 8 nearest test images, each marked right or wrong
    assert html.count('class="hit query-image"') == 12
    assert html.count('class="hit right"') + html.count('class="hit wrong"') == 96
    assert "teacher:\n  steps: 4" in html  # the resolved config


def test_report_escapes_every_name():
    hit = Hit("data:image/png;base64,AA", 'x/<img src=x onerror="alert(1)">.png', "<b>class</b>", True, 0.5)
    report = Report(run_name="<run>", config_yaml="a: <b>", stage_metrics={"<stage>": {"recall@1": 0.5}},
                    gap={"<emb>": {"weights": "<w>", "domain_accuracy": 0.9, "domain_accuracy_std": 0.01,
                                   "mmd2": 0.1, "traditional_accuracy": 0.5, "labeled_points": 2,
                                   "unlabeled_points": 2}},
                    sections=[FigureSection("<figs>", [("<caption>", b"png")])],
                    queries=[RetrievedQuery(hit, [hit])], retrieval_model="<model>", notes=["<note>"])
    html = render_report(report)
    assert not re.search(r"<(run|b|stage|emb|w|figs|caption|model|note)>", html)
    assert "onerror=" not in html.replace("onerror=&quot;", "")
    for name in ("run", "b&gt;class&lt;/b", "stage", "emb", "caption", "model", "note"):
        assert f"&lt;{name}&gt;" in html


def chromium(*args, timeout=120):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_report_renders_in_chromium(analysed_run, tmp_path):
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2400", (analysed_run / layout.REPORT).as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2400, 1280, 3)
    ink = (pixels < 200).any(axis=2)
    assert ink.mean() > 0.02  # text, tables and figures, not a blank page
    assert len(np.unique(pixels[ink], axis=0)) > 100  # the coloured maps are drawn


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_interactive_maps_wire_the_hover_in_chromium(analysed_run):
    dom = chromium("--dump-dom", (analysed_run / layout.ANALYSIS / layout.TSNE_PAGE).as_uri()).stdout
    assert 'data-hover-maps="3"' in dom  # the page's script parsed its data and ran
    assert dom.count("<svg") == 3


def test_a_current_analysis_is_kept_and_other_settings_redo_it(analysed_run):
    config = read_run_config(analysed_run)
    assert analysis_is_current(analysed_run, config) == json.loads(
        (analysed_run / layout.METRICS).read_text())["gap"]
    other = read_run_config(analysed_run, ["analysis.perplexity=20"])
    assert analysis_is_current(analysed_run, other) is None


def test_run_keeps_its_results_when_the_analysis_cannot_be_made(analysed_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(analysed_run, run_dir)
    with caplog.at_level(logging.WARNING, logger="slade"):
        metrics = run(read_run_config(run_dir, ["analysis.perplexity=100"]), run_dir)
    assert list(metrics) == ["pretrain", "teacher", "student"]
    assert json.loads((run_dir / layout.METRICS).read_text()) == metrics
    warning = f"no visual analysis of {run_dir}: t-SNE at perplexity 100 needs at least 301 points"
    assert warning in caplog.text


def test_bad_run_directories_give_one_line_errors(analysed_run, tmp_path):
    def tsne(run_dir, *options):
        return CliRunner().invoke(app, ["tsne", str(run_dir), *options]).exception

    assert "not a run directory (no config.yaml)" in str(tsne(tmp_path))
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    shutil.copy(analysed_run / layout.CONFIG, no_model)
    error = tsne(no_model)
    assert isinstance(error, CheckpointError) and "no finished stage with a model" in str(error)

    report = (analysed_run / layout.REPORT).read_bytes()
    error = tsne(analysed_run, "--perplexity", "100")
    assert isinstance(error, DataError)
    assert str(error) == ("t-SNE at perplexity 100 needs at least 301 points (3 x perplexity neighbours "
                          "each); the sample (72 labeled + 160 unlabeled images) has 232: lower "
                          "analysis.perplexity or sample more points")
    assert (analysed_run / layout.REPORT).read_bytes() == report  # the report is left whole

    one = tmp_path / "pool_of_one"
    (one / layout.TEACHER).mkdir(parents=True)
    (one / layout.CONFIG).write_text(dump_config(read_run_config(analysed_run, ["data.glyph_pool_size=1"])))
    shutil.copy(analysed_run / layout.TEACHER / layout.MODEL, one / layout.TEACHER)
    error = tsne(one)
    assert isinstance(error, DataError) and str(error).startswith("the unlabeled pool has 1 image(s)")


def test_staleness_is_decided_by_the_stages_digests_not_file_times(analysed_run, tmp_path):
    import os

    run_dir = tmp_path / "run"
    shutil.copytree(analysed_run, run_dir)
    config = read_run_config(run_dir)
    model = run_dir / layout.TEACHER / layout.MODEL
    os.utime(model, (model.stat().st_atime + 3600, model.stat().st_mtime + 3600))  # newer than the report
    assert analysis_is_current(run_dir, config) is not None
    done = json.loads((run_dir / layout.TEACHER / layout.DONE).read_text())
    done["outputs"][layout.MODEL] = "0" * 64  # as if the teacher had been trained again
    (run_dir / layout.TEACHER / layout.DONE).write_text(json.dumps(done))
    assert analysis_is_current(run_dir, config) is None


def test_the_analysis_writes_no_metrics_json_and_reads_the_basis_file(analysed_run, tmp_path):
    from slade.analysis.analyse import analyse_run

    run_dir = tmp_path / "run"
    shutil.copytree(analysed_run, run_dir)
    metrics = (run_dir / layout.METRICS).read_bytes()
    (run_dir / layout.STUDENT / layout.CHECKPOINT).unlink()  # the analysis never needs it
    gap = analyse_run(run_dir)
    assert gap == json.loads(metrics)["gap"]
    assert (run_dir / layout.METRICS).read_bytes() == metrics
    assert (run_dir / layout.ANALYSIS / layout.basis_figure(layout.STUDENT)).is_file()


def test_a_student_without_a_basis_file_gets_a_note_not_a_misread_histogram(analysed_run, tmp_path):
    """As a student finished by 9d7a007 left it: no basis.pt, and done.json does not list one."""
    from slade.analysis.analyse import compute_analysis

    run_dir = tmp_path / "run"
    shutil.copytree(analysed_run, run_dir)
    done = json.loads((run_dir / layout.STUDENT / layout.DONE).read_text())
    del done["outputs"][layout.BASIS]
    (run_dir / layout.STUDENT / layout.DONE).write_text(json.dumps(done))
    (run_dir / layout.STUDENT / layout.BASIS).unlink()
    analysis = compute_analysis(run_dir)
    assert layout.basis_figure(layout.STUDENT) not in analysis.files
    assert analysis.gap == json.loads((analysed_run / layout.METRICS).read_text())["gap"]
    assert ("student: no basis histogram: this stage was finished by a slade that kept its basis only "
            "in its training state; delete student/done.json and rerun `slade run`") in analysis.report
