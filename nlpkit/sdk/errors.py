"""Errors a user can act on. The CLI prints them without a traceback and exits non-zero."""
from __future__ import annotations


class NlpkitError(Exception):
    """Base class: the message alone must tell the user what to fix."""


class DataError(NlpkitError):
    """Bad input data. Carries the file and line (or record) so the user can open it at the fault."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path, self.line = path, line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ConfigError(NlpkitError):
    """A configuration key that is unknown, mistyped or out of range; the message names the key."""


class UnknownTaskError(NlpkitError):
    pass


class BackboneError(NlpkitError):
    pass


class CheckpointError(NlpkitError):
    pass


class PluginError(NlpkitError):
    """A task plugin broke the plugin contract; the message names the task and the hook."""


class TrainingError(NlpkitError):
    """Training cannot go on (e.g. repeated non-finite losses)."""


class Interrupted(NlpkitError):
    """Training stopped on a signal after writing a resumable checkpoint; ``exit_code`` is the shell's
    code for that signal (143 SIGTERM, 130 Ctrl-C)."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)


class NotStandard(NlpkitError):
    """A model cannot be exported in a standard form: no transformers class computes what this head computes, or
    it is not one graph (the reason is the message). Plugins raise it from ``export_model``; the export then
    writes nlpkit's own format for that task and says why in the model card."""
