"""Contextual similarity over the unlabeled pool (neighbourhoods), and the pair miner built on it."""
