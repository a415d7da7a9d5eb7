"""Errors that the CLI reports as one line (no traceback) with a non-zero exit."""


class SwapwatchError(Exception):
    """Base class for expected, user-facing failures."""

    exit_code = 1


class InputError(SwapwatchError):
    """A file or argument the user gave cannot be used (missing, empty, unreadable, wrong type)."""

    exit_code = 2


class InputTooLarge(InputError):
    """An input is larger than a limit allows (bytes, pixels); refused before the expensive step."""


class ModelError(SwapwatchError):
    """A model is unknown, missing from the cache, corrupt, or fails its hash check."""

    exit_code = 3


class FetchError(ModelError):
    """Fetching a model file failed (network, interrupted transfer, hash mismatch)."""


class BackendUnavailable(SwapwatchError):
    """The requested inference backend is not installed or cannot run here."""

    exit_code = 4
