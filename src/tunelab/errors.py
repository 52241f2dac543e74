"""The exception hierarchy of tunelab.

Library code raises these; only ``tunelab.cli`` catches them and turns them into a
one-screen message and exit code 1. Every message says what is wrong, the offending
value (with file and line for data) and how to fix it.

    TunelabError
    ├── ConfigError        a config file or override is invalid (lists every problem)
    ├── DataError          a data file or row is unusable (file, line, field)
    ├── ModelError         a base model or checkpoint cannot be found or loaded
    ├── TrainingError      training cannot go on (NaN/inf loss, bad resume state)
    ├── CheckpointError    a checkpoint is missing, incomplete or cannot be written
    ├── DependencyError    an optional dependency is missing (names the extra)
    └── ForgettingError    a run forgot more than forgetting.min_retention allows (exit 3)
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DependencyError",
    "ForgettingError",
    "ModelError",
    "TrainingError",
    "TunelabError",
]


class TunelabError(Exception):
    """Base class of every error tunelab raises on purpose."""

    hint: str | None = None
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\nhint: {self.hint}" if self.hint else text


class ConfigError(TunelabError):
    """The config is invalid. ``problems`` holds one ``(yaml_path, message)`` per problem."""

    def __init__(
        self,
        message: str,
        *,
        problems: list[tuple[str, str]] | None = None,
        hint: str | None = None,
    ) -> None:
        self.problems = problems or []
        if self.problems:
            lines = [message] + [f"  {path}: {msg}" for path, msg in self.problems]
            message = "\n".join(lines)
        super().__init__(message, hint=hint)


class DataError(TunelabError):
    """A data file or row is unusable. Carries the file, 1-based line and field when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.line, self.field = file, line, field
        self.problem = message  # without the location, for reports that show it apart
        where = ":".join(str(p) for p in (file, line) if p is not None)
        if field is not None:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message, hint=hint)

    @property
    def detail(self) -> str:
        """The problem and its hint, without the location (for reports that show it apart)."""
        return self.problem + (f" (hint: {self.hint})" if self.hint else "")


class ModelError(TunelabError):
    """A base model, alias or checkpoint cannot be found or loaded."""


class TrainingError(TunelabError):
    """Training cannot continue (non-finite loss, inconsistent resume state, ...)."""


class CheckpointError(TunelabError):
    """A checkpoint is missing, incomplete, or could not be written."""


class DependencyError(TunelabError):
    """An optional dependency is missing; the message names the pip extra to install."""


class ForgettingError(TunelabError):
    """The fine-tuned model kept less than ``forgetting.min_retention`` of its base abilities
    (the run finished and saved everything; the CLI exits with status 3 so pipelines stop)."""

    exit_code = 3
