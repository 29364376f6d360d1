"""Exception tree of the aligner, with slugs and the exit codes the CLI maps them to.

Exit codes (coverage.py style, "tool broke" != "check failed"): 0 pass, 1 fail (a finding of
severity error), 2 error (usage, environment, unreadable data, nothing compared).
"""
from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C: the shell convention (128 + SIGINT)

__all__ = [
    "EXIT_PASS", "EXIT_FAIL", "EXIT_ERROR", "EXIT_INTERRUPTED", "AlignerError", "UsageError", "SetupError",
    "TraceFormatError", "IncomparableError", "NoMatchError", "AdapterError", "exit_code_for",
]


class AlignerError(Exception):
    """Base of every error the aligner raises on purpose; ``slug`` is a stable machine name."""

    slug = "aligner-error"
    exit_code = EXIT_ERROR

    def __init__(self, message: str = "", *, slug: str | None = None) -> None:
        super().__init__(message)
        if slug is not None:
            self.slug = slug


class UsageError(AlignerError):
    """Bad arguments or options (unknown pair, incompatible flags, missing file)."""
    slug = "usage"


class SetupError(AlignerError):
    """The environment cannot run the request (framework missing, oneDNN unusable, subprocess died)."""
    slug = "environment"


class TraceFormatError(AlignerError):
    """A trace directory is missing, corrupt, or written with another TRACE_FORMAT."""
    slug = "trace-format"


class IncomparableError(AlignerError):
    """Two inputs cannot be compared (other pair, configuration, dtype, seed, inputs or weights)."""
    slug = "incomparable"


class NoMatchError(AlignerError):
    """Nothing could be compared (no matched module); never pass an empty comparison."""
    slug = "no-match"


class AdapterError(AlignerError):
    """A framework adapter could not capture (forward/backward raised, hooks could not be set)."""
    slug = "adapter"


def exit_code_for(exc: BaseException) -> int:
    """Exit status for an exception reaching the CLI: AlignerError -> its code, anything else -> 2."""
    return exc.exit_code if isinstance(exc, AlignerError) else EXIT_ERROR
