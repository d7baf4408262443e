"""t-SNE maps of the labeled set against the unlabeled pool: the SLADE supplementary's figures.

Each map shows one embedding (initial, teacher, student) of the same sample: labeled images
coloured by class, unlabeled images grey. The labeled points also carry the "traditional"
semi-supervised contrast of the supplementary's Figure 1: a random 10% drawn as ``×`` (what a
traditional setting would keep labeled) and the other 90% as ``+`` (its unlabeled set, from the
same distribution). t-SNE itself never sees a label.

openTSNE computes the maps: FFT-accelerated interpolation gradients (FIt-SNE) from 10,000 points
up, Barnes-Hut below, which is openTSNE's own rule: the FFT grid has a fixed cost per iteration
that dominates small maps (232 points: 10 s with FFT, 0.4 s with Barnes-Hut on 2 CPU cores).
Barnes-Hut maps run on one thread: on a busy machine its threads wait on each other (the same map:
0.7 s on one thread, 40 s on two while training ran beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import Collection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from openTSNE import TSNE

from slade.analysis.html_page import page, script_json
from slade.errors import DataError

#: ``MapPoints.kind``: the labeled 10% (×), the labeled 90% (+), the unlabeled pool (grey).
LABELED_10, LABELED_90, UNLABELED = 0, 1, 2
TRADITIONAL_FRACTION = 0.1
GREY = "#9e9e9e"


@dataclass
class MapPoints:
    """The sample every map shows, in the order of the embeddings' rows.

    Attributes:
        kind: ``LABELED_10``, ``LABELED_90`` or ``UNLABELED`` per point.
        labels: class index of labeled points, -1 for unlabeled ones.
        names: what hovering a point shows (class name and image source).
        thumbnails: ``data:`` URIs of the images (may be empty: no hover images).
    """

    kind: np.ndarray
    labels: np.ndarray
    names: list[str]
    thumbnails: list[str]

    @classmethod
    def of(cls, labeled_labels: np.ndarray, n_unlabeled: int, names: list[str],
           thumbnails: list[str], seed: int) -> MapPoints:
        """Labeled points first, then unlabeled; a random 10% of the labeled ones marked ``×``."""
        n = len(labeled_labels)
        kind = np.full(n + n_unlabeled, UNLABELED, dtype=np.int64)
        kind[:n] = LABELED_90
        rng = np.random.default_rng(seed)
        kind[rng.choice(n, max(1, round(TRADITIONAL_FRACTION * n)), replace=False)] = LABELED_10
        labels = np.concatenate([labeled_labels, np.full(n_unlabeled, -1)]).astype(np.int64)
        return cls(kind, labels, names, thumbnails)


def min_points(perplexity: float) -> int:
    """The smallest sample t-SNE can map at ``perplexity``: 3 x perplexity neighbours per point."""
    return int(3 * perplexity) + 1


def check_points(n: int, perplexity: float, what: str = "the sample") -> None:
    if n < min_points(perplexity):
        raise DataError(
            f"t-SNE at perplexity {perplexity:g} needs at least {min_points(perplexity)} points "
            f"(3 x perplexity neighbours each); {what} has {n}: lower analysis.perplexity "
            "or sample more points"
        )


#: From this many points openTSNE uses FFT gradients (and this module, every CPU core).
FFT_POINTS = 10_000


def tsne_2d(x: np.ndarray, perplexity: float = 30.0, seed: int = 0, n_jobs: int = -1) -> np.ndarray:
    """openTSNE map of the rows of ``x``: ``(n, 2)`` float32.

    ``n_jobs`` (-1: all cores) applies to FFT maps; Barnes-Hut maps use one thread.

    Raises:
        DataError: fewer points than ``perplexity`` needs (openTSNE would lower it silently).
    """
    check_points(len(x), perplexity)
    fft = len(x) >= FFT_POINTS
    tsne = TSNE(perplexity=perplexity, random_state=seed, n_jobs=n_jobs if fft else 1,
                negative_gradient_method="fft" if fft else "bh", verbose=False)
    return np.asarray(tsne.fit(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)


def class_colours(labels: np.ndarray) -> np.ndarray:
    """An RGBA colour per class index, neighbouring indices far apart on the colour wheel."""
    return colormaps["turbo"](0.05 + 0.9 * ((labels * 0.6180339887) % 1.0))


def plot_map(coords: np.ndarray, points: MapPoints, title: str, subtitle: str = "") -> Figure:
    """The supplementary's figure for one embedding (a matplotlib figure, no pyplot state)."""
    fig = Figure(figsize=(7.0, 7.4))
    ax = fig.subplots()
    pool = points.kind == UNLABELED
    ax.scatter(coords[pool, 0], coords[pool, 1], s=5, c=GREY, alpha=0.55, linewidths=0,
               label="unlabeled pool (grey)")
    for kind, marker, label in ((LABELED_90, "+", "labeled, 90% (+)"), (LABELED_10, "x", "labeled, 10% (×)")):
        chosen = points.kind == kind
        ax.scatter(coords[chosen, 0], coords[chosen, 1], s=18, marker=marker,
                   c=class_colours(points.labels[chosen]), linewidths=0.8, label=label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    legend = ax.legend(loc="lower right", fontsize=7, markerscale=1.5, framealpha=0.8)
    for handle in legend.legend_handles:
        if isinstance(handle, Collection):  # the scatters' markers
            handle.set_color("#444")
    fig.tight_layout()
    return fig


def _svg(coords: np.ndarray, points: MapPoints, size: int = 560, pad: int = 12) -> tuple[str, list]:
    """An SVG scatter of one map and the screen position of every point (for hovering)."""
    low, high = coords.min(0), coords.max(0)
    scale = (size - 2 * pad) / max(float((high - low).max()), 1e-9)
    xy = np.round((coords - low) * scale + pad, 1)
    xy[:, 1] = size - xy[:, 1]  # SVG's y axis points down
    colours = [to_hex(c) for c in class_colours(points.labels)]
    marks = []
    for i in np.argsort(points.kind != UNLABELED, kind="stable"):  # grey pool underneath
        x, y = xy[i]
        if points.kind[i] == UNLABELED:
            marks.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{GREY}" fill-opacity="0.6"/>')
        elif points.kind[i] == LABELED_10:
            marks.append(f'<path d="M{x - 3} {y - 3}L{x + 3} {y + 3}M{x - 3} {y + 3}L{x + 3} {y - 3}" '
                         f'stroke="{colours[i]}" stroke-width="1.3"/>')
        else:
            marks.append(f'<path d="M{x - 3.5} {y}H{x + 3.5}M{x} {y - 3.5}V{y + 3.5}" '
                         f'stroke="{colours[i]}" stroke-width="1.3"/>')
    svg = (f'<svg viewBox="0 0 {size} {size}" xmlns="http://www.w3.org/2000/svg">'
           + "".join(marks) + "</svg>")
    return svg, xy.ravel().tolist()


HOVER_SCRIPT = """
const data = JSON.parse(document.getElementById('map-data').textContent);
const tip = document.getElementById('tip');
document.querySelectorAll('.map svg').forEach((svg, m) => {
  const xy = data.maps[m];
  svg.addEventListener('mousemove', ev => {
    const p = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(svg.getScreenCTM().inverse());
    let best = -1, bestD = 64;
    for (let i = 0; i < xy.length / 2; i++) {
      const d = (xy[2 * i] - p.x) ** 2 + (xy[2 * i + 1] - p.y) ** 2;
      if (d < bestD) { bestD = d; best = i; }
    }
    if (best < 0) { tip.style.display = 'none'; return; }
    tip.replaceChildren();
    if (data.thumbnails.length) {
      const img = document.createElement('img');
      img.src = data.thumbnails[best];
      tip.appendChild(img);
    }
    const text = document.createElement('div');
    text.textContent = data.names[best];
    tip.appendChild(text);
    tip.style.left = (ev.clientX + 14) + 'px';
    tip.style.top = (ev.clientY + 14) + 'px';
    tip.style.display = 'block';
  });
  svg.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
});
document.body.dataset.hoverMaps = data.maps.length;  // the hover is wired (checked by the tests)
"""


def interactive_page(maps: list[tuple[str, str, np.ndarray]], points: MapPoints, heading: str) -> str:
    """One HTML page with every map as SVG; hovering a point shows its image and name.

    Args:
        maps: ``(title, subtitle, coords)`` per embedding, all of the same ``points``.
    """
    sections, positions = [], []
    for title, subtitle, coords in maps:
        svg, xy = _svg(coords, points)
        positions.append(xy)
        sections.append(f'<div class="map"><h3>{escape(title)}</h3><p class="note">{escape(subtitle)}</p>'
                        f"{svg}</div>")
    data = {"maps": positions, "names": points.names, "thumbnails": points.thumbnails}
    body = (f"<h1>{escape(heading)}</h1>\n<p>Labeled images coloured by class (× a random 10%, + the "
            "other 90%: the traditional setting's labeled and unlabeled sets); unlabeled pool in "
            "grey. Hover a point to see its image.</p>\n" + "\n".join(sections)
            + '\n<div id="tip"></div>\n'
            + f'<script type="application/json" id="map-data">{script_json(data)}</script>')
    return page(heading, body, HOVER_SCRIPT)
