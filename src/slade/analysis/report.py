"""``RUN/report.html``: one self-contained page about a run.

The config, the retrieval metrics of every stage, the domain gap of every embedding, every figure
(embedded as PNG), and a retrieval browser: test queries with their nearest test images, each
marked right (same class) or wrong. The page is built from plain data (:class:`Report`) so that
it can be tested without a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from slade.analysis.html_page import page, table
from slade.analysis.images import png_uri

STAGE_COLUMNS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision",
                 "precision@1", "nmi")


@dataclass
class Hit:
    """One retrieved image (or the query itself)."""

    thumbnail: str
    source: str
    class_name: str
    right: bool = False
    similarity: float = 1.0


@dataclass
class RetrievedQuery:
    query: Hit
    hits: list[Hit]


@dataclass
class FigureSection:
    """A heading and its figures: ``(caption, screen-resolution PNG bytes)``."""

    heading: str
    figures: list[tuple[str, bytes]]
    intro: str = ""
    #: Markup after the figures (built by :func:`cluster_table`, which escapes its cells).
    after: str = ""
    #: Figures side by side.
    columns: int = 1


@dataclass
class Report:
    run_name: str
    config_yaml: str
    stage_metrics: dict[str, dict]
    gap: dict[str, dict]
    data_summary: dict = field(default_factory=dict)
    sections: list[FigureSection] = field(default_factory=list)
    queries: list[RetrievedQuery] = field(default_factory=list)
    retrieval_model: str = ""
    notes: list[str] = field(default_factory=list)


def _number(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def gap_summary(gap: dict[str, dict]) -> list[str]:
    """Sentences on how the domain-classifier accuracy moved from each embedding to the next."""
    names = list(gap)
    lines = []
    for before, after in zip(names, names[1:], strict=False):
        a, b = gap[before]["domain_accuracy"], gap[after]["domain_accuracy"]
        verb = "falls" if b < a else "rises" if b > a else "stays"
        lines.append(f"Domain-classifier accuracy {verb} from {a:.3f} ({before}) to {b:.3f} ({after}): "
                     f"{b - a:+.3f}; kernel MMD² from {gap[before]['mmd2']:.4f} to {gap[after]['mmd2']:.4f}.")
    return lines


def _metrics_section(report: Report) -> str:
    columns = [c for c in STAGE_COLUMNS if any(c in m for m in report.stage_metrics.values())]
    rows = [[stage, *(_number(m.get(c)) for c in columns), _number(m.get("train_seconds")),
             str(m.get("init", ""))] for stage, m in report.stage_metrics.items()]
    return ("<h2>Retrieval on the test classes</h2>"
            + table(["stage", *columns, "train s", "init"], rows))


def _gap_section(report: Report) -> str:
    if not report.gap:
        return ""
    rows = [[name, g.get("weights", ""), f"{g['domain_accuracy']:.3f} ± {g['domain_accuracy_std']:.3f}",
             f"{g['mmd2']:.4f}", _number(g.get("traditional_accuracy")),
             f"{g['labeled_points']} / {g['unlabeled_points']}"]
            for name, g in report.gap.items()]
    sentences = "".join(f"<p>{escape(s)}</p>" for s in gap_summary(report.gap))
    return ("<h2>Domain gap: labeled set vs unlabeled pool</h2>"
            "<p class=\"note\">Domain accuracy: cross-validated logistic regression telling labeled from "
            "unlabeled embeddings (balanced, chance 0.5). MMD²: unbiased, RBF kernel, median-distance "
            "width. Traditional: the same classifier telling a random 10% of the labeled sample from the "
            "other 90% — what the gap looks like when both sets share one distribution.</p>"
            + table(["embedding", "weights", "domain accuracy", "MMD²", "traditional 10%/90% accuracy",
                     "points (labeled / unlabeled)"], rows) + sentences)


def _figures_section(section: FigureSection) -> str:
    width = f' style="width: {100 / section.columns - 2:.0f}%"' if section.columns > 1 else ""
    figures = "".join(f'<figure{width}><img class="figure" alt="{escape(caption)}" src="{png_uri(png)}">'
                      f"<figcaption>{escape(caption)}</figcaption></figure>"
                      for caption, png in section.figures)
    intro = f"<p>{escape(section.intro)}</p>" if section.intro else ""
    return f"<h2>{escape(section.heading)}</h2>{intro}{figures}{section.after}"


def _hit_html(hit: Hit, kind: str) -> str:
    mark = {"right": "✓", "wrong": "✗", "query-image": "query"}[kind]
    similarity = "" if kind == "query-image" else f" {hit.similarity:.2f}"
    return (f'<div class="hit {kind}" title="{escape(hit.source)}"><img alt="{escape(hit.source)}" '
            f'src="{hit.thumbnail}"><div><span class="mark">{mark}</span>{similarity}</div>'
            f"<div>{escape(hit.class_name)}</div></div>")


def retrieval_browser(queries: list[RetrievedQuery], model: str) -> str:
    if not queries:
        return ""
    blocks = []
    for q in queries:
        hits = "".join(_hit_html(h, "right" if h.right else "wrong") for h in q.hits)
        right = sum(h.right for h in q.hits)
        blocks.append(f'<div class="query">{_hit_html(q.query, "query-image")}{hits}'
                      f'<div class="note">{right}/{len(q.hits)} right</div></div>')
    return (f"<h2>Retrieval browser</h2><p class=\"note\">Test queries and their nearest test images under "
            f"the {escape(model)} embedding (cosine similarity); green ✓ same class, red ✗ another class.</p>"
            + "".join(blocks))


def cluster_table(stats: dict[str, dict]) -> str:
    """``clusters.json`` of each pseudo-label round as a table."""
    if not stats:
        return ""
    keys = [k for k in ("clusters", "outliers", "images", "size_min", "size_median", "size_max", "empty",
                        "singletons", "purity", "nmi") if any(k in s for s in stats.values())]
    rows = [[name, *(_number(s.get(k)) for k in keys)] for name, s in stats.items()]
    return "<h3>Pseudo-label clusters</h3>" + table(["pseudo labels", *keys], rows)


def render_report(report: Report) -> str:
    data = ""
    if report.data_summary:
        rows = [[name, str(part.get("images", "")), str(part.get("classes", "")),
                 ", ".join(part.get("domains", []))]
                for name, part in report.data_summary.items() if isinstance(part, dict) and "images" in part]
        data = "<h2>Data</h2>" + table(["set", "images", "classes", "domains"], rows)
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in report.notes)
    sections = [_figures_section(section) for section in report.sections]
    body = (f"<h1>SLADE run report: {escape(report.run_name)}</h1>{notes}{data}"
            + _metrics_section(report) + _gap_section(report) + "".join(sections)
            + retrieval_browser(report.queries, report.retrieval_model)
            + f"<h2>Config</h2><pre>{escape(report.config_yaml)}</pre>")
    return page(f"SLADE report: {report.run_name}", body)
