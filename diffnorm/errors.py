"""The package's exceptions, at the bottom of the import graph: every layer may raise them.

``ConfigError`` is bad input (a setting, a file, an argument) and becomes one ``error:`` line and exit
code 2 in the scripts; ``TrainingStopped`` and its subclasses are trainings that stopped themselves with
their last good checkpoint on disk.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad setting or input; the scripts print it as one line and exit non-zero."""


class TrainingStopped(RuntimeError):
    """A run that stopped itself on purpose with its last good checkpoint on disk; ``exit_code`` is what
    the script exits with."""

    exit_code = 3


class TrainingDiverged(TrainingStopped):
    """The loss became NaN or infinite; the checkpoint from before it is kept."""


class TrainingInterrupted(TrainingStopped):
    """SIGINT (Ctrl-C): a final checkpoint was written; ``train.resume=true`` continues the run."""

    exit_code = 130  # 128 + SIGINT, the shell's convention


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)
