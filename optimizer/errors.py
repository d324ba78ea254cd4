"""Errors a user can cause. The CLI prints their message as one sentence, with no traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of a third-party exception's message, to quote inside one of ours (no final
    period, at most 300 characters: onnxruntime's messages can run to pages)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")[:300]


class NinoptError(Exception):
    """Bad input or a request ninopt cannot honour (CLI exit code 2)."""

    exit_code = 2


class VerificationError(NinoptError):
    """An optimized model disagrees with its input beyond tolerance (CLI exit code 1)."""

    exit_code = 1


class InvariantError(NinoptError):
    """A pass left the graph structurally broken: a bug of ninopt, not of the model (CLI exit code 3).

    The message names the pass and the ones before it, so the report can be acted on."""

    exit_code = 3
