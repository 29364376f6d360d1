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

    def __init_subclass__(cls, slug: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if slug is not None:
            cls.slug = slug

    def __init__(self, message: str = "", *, slug: str | None = None) -> None:
        super().__init__(message)
        if slug is not None:
            self.slug = slug


# One line each: the slug is the class keyword, the docstring says when it is raised.
class UsageError(AlignerError, slug="usage"): """Bad arguments or options (unknown pair, flags, missing file)."""
class SetupError(AlignerError, slug="environment"): """The environment cannot run the request (framework, oneDNN)."""
class TraceFormatError(AlignerError, slug="trace-format"): """A trace is missing, corrupt, or of another format."""
class IncomparableError(AlignerError, slug="incomparable"): """Two inputs differ in pair, config, dtype, seed or data."""
class NoMatchError(AlignerError, slug="no-match"): """Nothing could be compared (no matched module)."""
class AdapterError(AlignerError, slug="adapter"): """A framework adapter could not capture (forward/backward raised)."""


def exit_code_for(exc: BaseException) -> int:
    """Exit status for an exception reaching the CLI: AlignerError -> its code, anything else -> 2."""
    return exc.exit_code if isinstance(exc, AlignerError) else EXIT_ERROR
