"""Exception tree of the aligner, with slugs and the exit codes the CLI maps them to.

Exit codes (coverage.py style, "tool broke" != "check failed"): 0 pass, 1 fail (a finding of
severity error), 2 error (usage, environment, unreadable data, nothing compared).
"""
from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2

__all__ = [
    "EXIT_PASS", "EXIT_FAIL", "EXIT_ERROR", "AlignerError", "UsageError", "EnvironmentError",
    "TraceFormatError", "NoMatchError", "AdapterError", "WeightTransferError", "exit_code_for",
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


class EnvironmentError(AlignerError):  # noqa: A001 - the name the project design fixes
    """The environment cannot run the request (framework missing, oneDNN unusable, subprocess died)."""
    slug = "environment"


class TraceFormatError(AlignerError):
    """A trace directory is missing, corrupt, or written with another TRACE_FORMAT."""
    slug = "trace-format"


class NoMatchError(AlignerError):
    """Nothing could be compared (no matched module); never pass an empty comparison."""
    slug = "no-match"


class AdapterError(AlignerError):
    """A framework adapter could not capture (forward/backward raised, hooks could not be set)."""
    slug = "adapter"


class WeightTransferError(AlignerError):
    """Weights could not be moved between frameworks at all (problems that can be reported are findings)."""
    slug = "weight-transfer"


def exit_code_for(exc: BaseException) -> int:
    """Exit status for an exception reaching the CLI: AlignerError -> its code, anything else -> 2."""
    return exc.exit_code if isinstance(exc, AlignerError) else EXIT_ERROR
