"""Retrieval evaluation: Recall@K, MAP@R, R-Precision, Precision@1 and NMI of embeddings."""

from slade.evaluation.retrieval import evaluate_embeddings

__all__ = ["evaluate_embeddings"]
