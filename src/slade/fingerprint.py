"""What a stage's outputs depend on, as plain data: compared on resume and when a stage is reused.

A stage's fingerprint (``RunContext.fingerprint``) holds its config section, the data and model
settings, the seed, and the digests of the files it read from earlier stages. It is stored in the
stage's checkpoint and in its ``done.json`` (``stages/common.py``); the training loop's checkpoint
(``engine/checkpoint.py``) and the stages compare them by the one rule here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from slade.dicts import differing_keys, flatten

# Settings that do not change what a stage computes (`rounds` adds stages after it; `compile` only
# how fast it runs): a checkpoint or a finished stage made with other values of these is still used.
BOOKKEEPING = ("eval_every", "checkpoint_every", "log_every", "num_workers", "nonfinite", "max_rollbacks",
               "rounds", "compile")

# Settings added to the code after runs were made with it, each with the value the code acted on
# before it existed: a fingerprint written before then reads as holding that value, so that a stage
# made before a setting existed is redone when the setting is now set to something else.
ADDED = {"pseudo_labels.method": "kmeans", "student.context_negative_below": 0.0}


def config_fingerprint(config: Any) -> dict[str, Any]:
    """A config section as plain data, to compare on resume (bookkeeping settings left out)."""
    return {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k not in BOOKKEEPING}


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two fingerprints.

    Only keys present in both count, so that a setting added to (or removed from) the code since the
    fingerprint was written does not make every existing run stale; but a setting in ``ADDED`` that
    the saved fingerprint lacks counts as holding its value of before.
    """
    saved = flatten(saved)
    saved |= {key: value for key, value in ADDED.items()
              if key not in saved and any(k.startswith(key.rsplit(".", 1)[0] + ".") for k in saved)}
    return differing_keys(saved, flatten(current), shared_only=True)
