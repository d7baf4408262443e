"""The gap between the labeled set and the unlabeled pool in an embedding, as numbers.

The SLADE supplementary shows the gap as t-SNE pictures; these two measures let a run track it:

- **domain-classifier accuracy**: how well a logistic regression tells labeled from unlabeled
  embeddings (cross-validated, classes balanced). 0.5 means the sources are indistinguishable,
  1.0 that they are linearly separable.
- **kernel MMD**: the unbiased squared maximum mean discrepancy under an RBF kernel whose width
  is the median pairwise distance (Gretton et al., JMLR 2012). About 0 for one distribution.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from slade.errors import DataError

FOLDS = 5


def balanced(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Both sets cut to the size of the smaller one (rows drawn without replacement)."""
    n = min(len(a), len(b))
    rng = np.random.default_rng(seed)
    return (a[np.sort(rng.choice(len(a), n, replace=False))],
            b[np.sort(rng.choice(len(b), n, replace=False))])


def _check(a: np.ndarray, b: np.ndarray, what: tuple[str, str]) -> None:
    for name, x in zip(what, (a, b), strict=True):
        if len(x) < 2:
            raise DataError(f"the {name} sample has {len(x)} image(s): measuring the gap between two "
                            "sources needs at least 2 of each")


def domain_classifier_accuracy(a: np.ndarray, b: np.ndarray, seed: int = 0,
                               what: tuple[str, str] = ("labeled", "unlabeled")) -> tuple[float, float]:
    """Cross-validated accuracy (mean, std over folds) of telling rows of ``a`` from rows of ``b``.

    The sets are balanced first, so chance is 0.5. Features are standardised, then fed to an
    L2-regularised logistic regression; ``min(5, n)`` stratified folds.
    """
    _check(a, b, what)
    a, b = balanced(a, b, seed)
    x = np.concatenate([a, b]).astype(np.float64)
    y = np.repeat([0, 1], len(a))
    folds = StratifiedKFold(min(FOLDS, len(a)), shuffle=True, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with threadpool_limits(1):  # a few thousand rows: BLAS threads cost more than they save
        scores = cross_val_score(classifier, x, y, cv=folds)
    return float(scores.mean()), float(scores.std())


def median_bandwidth(x: np.ndarray) -> float:
    """The median of the pairwise Euclidean distances between distinct rows (the median heuristic)."""
    d2 = _squared_distances(x, x)
    return float(np.median(np.sqrt(d2[~np.eye(len(x), dtype=bool)])))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d2, 0.0)


def mmd_rbf(a: np.ndarray, b: np.ndarray, sigma: float | None = None,
            what: tuple[str, str] = ("labeled", "unlabeled")) -> tuple[float, float]:
    """Unbiased MMD^2 between ``a`` and ``b`` under ``k(x, y) = exp(-|x - y|^2 / (2 sigma^2))``.

    Args:
        sigma: kernel width; ``None`` takes the median pairwise distance of ``a`` and ``b`` pooled.

    Returns:
        ``(mmd2, sigma)``.
    """
    _check(a, b, what)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if sigma is None:
        sigma = median_bandwidth(np.concatenate([a, b]))
    if sigma <= 0:  # every point identical: one distribution
        return 0.0, 0.0
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(x: np.ndarray, y: np.ndarray, same: bool) -> float:
        k = np.exp(-gamma * _squared_distances(x, y))
        if same:  # the unbiased estimate leaves out k(x_i, x_i)
            n = len(x)
            return float((k.sum() - np.trace(k)) / (n * (n - 1)))
        return float(k.mean())

    mmd2 = mean_kernel(a, a, True) + mean_kernel(b, b, True) - 2.0 * mean_kernel(a, b, False)
    return mmd2, float(sigma)


def domain_gap(labeled: np.ndarray, unlabeled: np.ndarray, seed: int = 0,
               mmd_points: int = 1000) -> dict[str, float]:
    """Both measures for one embedding of the two sources.

    MMD uses at most ``mmd_points`` rows of each source (its cost is quadratic).
    """
    accuracy, spread = domain_classifier_accuracy(labeled, unlabeled, seed)
    rng = np.random.default_rng(seed)
    a = labeled[rng.permutation(len(labeled))[:mmd_points]]
    b = unlabeled[rng.permutation(len(unlabeled))[:mmd_points]]
    mmd2, sigma = mmd_rbf(a, b)
    return {"domain_accuracy": accuracy, "domain_accuracy_std": spread, "mmd2": mmd2,
            "mmd_sigma": sigma}
