"""What every writer of this tool shares: writing a file or a folder atomically (staged as ``.NAME.tmp-PID`` beside
its target, then renamed into place), whether the process that staged one still runs, and removing the temporaries
a killed process left behind.

    with atomic_file(path, UsageError, "pass another --output") as temporary:
        frame.to_csv(temporary)                   # on success renamed to path; on failure removed, one-line error
"""

import contextlib
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


def temporary_beside(path):
    """Where ``path`` is staged: ``.NAME.tmp-PID`` in its folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path, error=OSError, hint="pass another path", what="it"):
    """Yields the temporary file to write ``path``'s contents to; renames it to ``path`` when the block ends, or
    removes it and raises ``error`` (one line: the path, "cannot write ``what``", why, and ``hint``) when writing
    failed, so a failure never
    leaves a half-written file. Errors other than OSError (and torch's RuntimeError for a failed write) pass
    through after the temporary file is removed."""
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as failure:
        if isinstance(failure, RuntimeError) and "write" not in str(failure):
            temporary.unlink(missing_ok=True)
            raise
        reason = write_failure(failure, path.parent)  # before the partial file goes, freeing its space
        temporary.unlink(missing_ok=True)
        raise error(f"{path}: cannot write {what} ({reason}); {hint}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(folder, flag, error=OSError):
    """Yields a new staging folder for ``folder``'s files; renames it to ``folder`` (absent, or an empty folder)
    when the block ends, or removes it (and raises ``error`` naming ``flag`` when writing failed)."""
    folder = Path(folder)
    staging = temporary_beside(folder)
    try:
        staging.mkdir()
        yield staging
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except OSError as failure:
        raise error(f"{folder}: cannot write it ({write_failure(failure, folder.parent)}); free some space or pass "
                    f"another {flag} folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
