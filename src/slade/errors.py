"""Errors that reach the user as one line: what is wrong and where."""


class SladeError(Exception):
    """Base class for every error the command line reports without a traceback."""


class ConfigError(SladeError):
    """A config file or override is invalid (names the file, line and key)."""


class DataError(SladeError):
    """Input data is missing, unreadable or does not fit the protocol (names the file)."""


class CheckpointError(SladeError):
    """A checkpoint is corrupt, unsafe or belongs to another model."""


class ExportError(SladeError):
    """A model cannot be exported for serving (unknown format, exporter failure, outputs that differ)."""


class WriteError(SladeError):
    """The disk refused a write (full, read-only, no permission): names the file and the cause.

    The write was atomic, so the file it would have replaced and every finished stage are intact:
    a rerun with space resumes.
    """


class Preempted(SladeError):
    """Training stopped on a signal after writing its checkpoint; rerun to resume.

    Here rather than in ``engine/preemption.py`` so that the command line catches it without
    importing torch (``slade embed`` with an ONNX model runs without it).
    """


# The exit status after a graceful stop: EX_TEMPFAIL, try again later.
PREEMPTED_EXIT = 75


class TrainingError(SladeError):
    """Training cannot go on (non-finite loss, nothing to learn from)."""


class TooManyBadImages(DataError):
    """More images of a set than ``data.max_bad_fraction`` cannot be read.

    ``bad`` lists them as ``(split, BadImage)`` pairs, so that the run can write them out.
    """

    def __init__(self, message: str, bad: list | None = None) -> None:
        super().__init__(message)
        self.bad = bad or []


class DistributedError(TrainingError):
    """Another process of a distributed run stopped or stopped answering."""
