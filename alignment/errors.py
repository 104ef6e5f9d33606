"""User-facing errors: the CLI prints their message (which names the file, key or row) without a traceback."""


class AlignmentError(Exception):
    """Bad input or a missing resource that the user can fix."""


class RecipeError(AlignmentError, ValueError):
    """A recipe or override that does not validate."""


class DataError(AlignmentError, ValueError):
    """Bad input data; the message names the file (or dataset) and the line (or row)."""


class ModelSourceError(AlignmentError, RuntimeError):
    """A model that cannot be found or loaded; the message says what to do instead."""


class RunStateError(AlignmentError):
    """The run directory is not in the state a command needs (e.g. a finished run without --resume)."""
