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
