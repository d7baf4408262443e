"""slade: semi-supervised deep metric learning with unlabeled images from another source (SLADE)."""

__version__ = "0.1.0"
