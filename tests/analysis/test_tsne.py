"""openTSNE maps, the supplementary's figure, and the interactive page."""

import json
import re

import numpy as np
import pytest

from slade.analysis.tsne import (
    LABELED_10,
    LABELED_90,
    UNLABELED,
    MapPoints,
    interactive_page,
    min_points,
    plot_map,
    tsne_2d,
)
from slade.errors import DataError


def clusters(n_per: int = 40, k: int = 3, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(k, dim))
    labels = np.repeat(np.arange(k), n_per)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def test_tsne_keeps_clusters_apart_and_is_deterministic():
    x, labels = clusters()
    coords = tsne_2d(x, perplexity=10, seed=3)
    assert coords.shape == (120, 2) and coords.dtype == np.float32
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).all()  # every point's 2-d neighbour is of its cluster
    assert np.array_equal(coords, tsne_2d(x, perplexity=10, seed=3))


def test_too_few_points_for_the_perplexity_is_a_clear_error():
    assert min_points(30) == 91
    with pytest.raises(DataError, match=r"perplexity 30 needs at least 91 points .* has 20: lower"):
        tsne_2d(np.zeros((20, 4)), perplexity=30)


def test_map_points_mark_a_tenth_of_the_labeled_set_as_the_traditional_labeled_set():
    points = MapPoints.of(np.arange(50) % 5, 30, [f"p{i}" for i in range(80)], [], seed=0)
    assert (points.kind == LABELED_10).sum() == 5 and (points.kind == LABELED_90).sum() == 45
    assert (points.kind[50:] == UNLABELED).all() and (points.labels[50:] == -1).all()
    again = MapPoints.of(np.arange(50) % 5, 30, [f"p{i}" for i in range(80)], [], seed=0)
    assert np.array_equal(points.kind, again.kind)


def test_figure_draws_pool_and_both_labeled_markers():
    x, labels = clusters(n_per=10)
    points = MapPoints.of(labels[:20], 10, [""] * 30, [], seed=0)
    fig = plot_map(x[:, :2], points, "teacher embedding", "domain accuracy 0.9")
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [10, 18, 2]  # grey, +, x
    assert ax.get_title() == "teacher embedding\ndomain accuracy 0.9"


def test_interactive_page_escapes_names_and_embeds_thumbnails():
    names = ["<script>alert(1)</script>", "a&b", "c"]
    thumbs = ["data:image/png;base64,AAAA"] * 3
    points = MapPoints.of(np.array([0, 1]), 1, names, thumbs, seed=0)
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    maps = [("initial <b>", "sub", coords), ("teacher", "", coords)]
    html = interactive_page(maps, points, "maps of <run>")
    assert "<script>alert" not in html and "<b>" not in html and "<run>" not in html
    assert "initial &lt;b&gt;" in html and "maps of &lt;run&gt;" in html
    assert html.count("<svg") == 2
    data = json.loads(re.search(r'id="map-data">(.*?)</script>', html, re.S).group(1))
    assert data["names"] == names and data["thumbnails"] == thumbs
    assert len(data["maps"]) == 2 and len(data["maps"][0]) == 6  # x, y per point
