"""What a stage's outputs depend on, as plain data: compared on resume and when a stage is reused.

A stage's fingerprint (``RunContext.fingerprint``) holds its config section, the data and model
settings, the seed, and the digests of the files it read from earlier stages. It is stored in the
stage's checkpoint and in its ``done.json`` (``stages/common.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from slade.dicts import differing_keys

# Settings that do not change what a stage computes (`rounds` adds stages after it; `compile` only
# how fast it runs): a checkpoint or a finished stage made with other values of these is still used.
BOOKKEEPING = ("eval_every", "checkpoint_every", "log_every", "num_workers", "nonfinite", "max_rollbacks",
               "rounds", "compile")


def config_fingerprint(config: Any) -> dict[str, Any]:
    """A config section as plain data, to compare on resume (bookkeeping settings left out)."""
    return {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k not in BOOKKEEPING}


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two fingerprints.

    Only keys present in both count, so that a setting added to (or removed from) the code since the
    fingerprint was written does not make every existing run stale.
    """
    return differing_keys(saved, current, shared_only=True)
