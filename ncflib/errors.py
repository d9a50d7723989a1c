"""The one-line errors of every command: input a user can fix, reported as ``tool: error: MESSAGE`` and exit 1.

Each message names the file, row, flag or id at fault and says what to do. The commands catch ``UsageError`` alone;
the subclasses say where the problem was found, for tests and callers that want to tell them apart.
"""


class UsageError(Exception):
    """Input this tool cannot use (a flag, an id, a file): one line naming it and what to do."""


class DatasetError(UsageError):
    """A --data directory that cannot be used: the message names the file and the problem."""


class ConversionError(UsageError):
    """Raw input that cannot be converted: the message names the file, line or flag."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be used here: the message names the file and what to do."""


class TaskError(UsageError):
    """A model and a dataset (or flags) that do not go together."""


class ShardingError(TaskError):
    """A sharding plan that cannot be made (TorchRec missing, a budget too small)."""


class DeviceError(UsageError):
    """The requested device is not available."""


class RanksDisagree(UsageError):
    """torchrun's ranks were given different data, settings or epochs to resume from."""


def warnings_after(main):
    """``main`` (a command's main(argv) -> exit status) with the Python warnings its run raises held until it ends:
    shown then, as they would have been, when it succeeds; dropped when it ends in a one-line error, which they
    would otherwise precede in their two-line form (a library's notice about its own internals, before the line
    that says what to fix)."""
    import functools
    import warnings

    @functools.wraps(main)
    def held(argv=None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            status = main(argv)
        if not status:
            for warning in caught:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno,
                                       source=warning.source)
        return status

    return held
