"""Errors that the CLI turns into one clear line (``kt-stardist: error: ...``), no traceback."""


class KtError(Exception):
    """Base class for errors a user can act on. The message is one line and names the file."""


class InputError(KtError, ValueError):
    """Bad input: unreadable file, wrong shape or channel count, NaN/Inf, constant volume,
    missing voxel size, unknown axis layout."""


class OutputError(KtError, OSError):
    """An output could not be written (disk full, read-only, no permission); the previous file,
    if any, is left as it was."""
