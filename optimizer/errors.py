"""Errors a user can cause. The CLI prints their message as one sentence, with no traceback."""


class NinoptError(Exception):
    """Bad input or a request ninopt cannot honour (CLI exit code 2)."""

    exit_code = 2


class VerificationError(NinoptError):
    """An optimized model disagrees with its input beyond tolerance (CLI exit code 1)."""

    exit_code = 1


class InvariantError(NinoptError):
    """A pass left the graph structurally broken; names the pass and the ones before it."""

    exit_code = 1
