"""Visual analysis of a run: how far the labeled set and the unlabeled pool lie apart, and what the
model retrieves (the SLADE supplementary's t-SNE study, made repeatable).

- ``tsne.py``: openTSNE maps, labeled coloured by class and unlabeled grey (PNG + interactive HTML)
- ``gap.py``: the gap as numbers: domain-classifier accuracy and kernel MMD
- ``plots.py``: training and mining plots from ``log.jsonl``, pseudo labels and the feature basis
- ``report.py``: ``RUN/report.html``, one self-contained page
- ``analyse.py``: :func:`analyse_run`, which does all of it for a run directory (``slade tsne``)
- ``images.py``, ``html_page.py``: PNG and ``data:`` URI helpers, the self-contained page template

Retrieval for users (``slade index`` / ``slade query``) lives in ``slade/retrieval_index.py``.
"""

from slade.analysis.analyse import analyse_run

__all__ = ["analyse_run"]
