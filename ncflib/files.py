"""What every writer of this tool shares: is the process that staged a temporary file still running, and removing
the temporaries a killed process left behind (a file or folder written as ``.NAME.tmp-PID`` beside its target,
then renamed into place)."""

import errno
import os
import re
import shutil
from pathlib import Path


def process_alive(pid):
    """Whether process ``pid`` runs (this one counts; another user's process counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder, name=None):
    """Delete the ``.NAME.tmp-PID`` files and folders in ``folder`` (of ``name`` alone, when given) whose process
    has died: what a run killed while writing left behind."""
    pattern = r"\..+\.tmp-(\d+)" if name is None else rf"\.{re.escape(name)}\.tmp-(\d+)"
    for temporary in Path(folder).glob(".*.tmp-*"):
        match = re.fullmatch(pattern, temporary.name)
        if not match or process_alive(int(match.group(1))):
            continue
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def write_failure(error, folder=None):
    """Why a write into ``folder`` failed, in words: "no space left on device" also where the writer hides the
    errno (numpy's "N requested and M written", torch's "file write failed") and the disk is full, else the
    system's reason."""
    if getattr(error, "errno", None) == errno.ENOSPC or re.search(r"\d+ requested and \d+ written", str(error)):
        return "no space left on device"
    if folder is not None and not getattr(error, "errno", None):
        try:
            if shutil.disk_usage(folder).free < 2**20:
                return "no space left on device"
        except OSError:
            pass
    return getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0][:100]
