"""The store's refusals: a database file it cannot use, and submissions it will not take."""

from __future__ import annotations

from alignment.errors import AlignmentError


class StoreError(AlignmentError, RuntimeError):
    """The database file cannot be used (newer schema, not a ranking store, corrupt)."""


class SubmissionError(AlignmentError, ValueError):
    """A submission the store refuses; the message is shown to the annotator as is."""


class LeaseError(SubmissionError):
    """The lease a submission refers to is unknown, someone else's, closed, or expired and taken."""


class UnknownAnnotatorError(SubmissionError):
    """A name that is not in the annotators table."""
