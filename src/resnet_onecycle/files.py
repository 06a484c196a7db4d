"""Files written whole or not at all, and the named moments at which a test can stop a process.

`written_whole(path, kind)` gives a file beside `path` (`.<name>.partial`) to write; once it is
complete it is moved over `path` in one step, so a crash leaves the old file or the new one, never
half of one. A write that fails (a full disk) removes the partial file and raises WriteError,
naming `path`: whatever `path` held before is still there.

With `RESNET_ONECYCLE_PAUSE=<kind>[:<n>]` the process stops at the n-th write of that kind (the
first by default) with the new file complete beside the old one and not yet moved: it creates the
file that `RESNET_ONECYCLE_PAUSE_FLAG` names, holding its pid, and waits until that file is gone.
The tests kill it there, or fill its disk and let it go on. Kinds: cache, checkpoint, metrics,
picture, report.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resnet_onecycle.errors import UserError


class WriteError(UserError):
    """A file that could not be written; the message names it and the fix. Not the user's input,
    so the run reads `failed` and the script exits with 1."""

    status, exit_code = "failed", 1


def write_error(path: Path, error: OSError) -> WriteError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (f"free space on that disk (df -h {path.parent}) or write elsewhere (paths.log_dir, paths.data_dir); "
               "a training run then continues with python src/train.py resume=<its run dir>")
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make that folder writable, or write elsewhere (paths.log_dir, paths.data_dir)"
    else:
        fix = "check that disk, then run again"
    return WriteError(f"could not write {path}: {reason}. Any earlier version of it is kept; {fix}.")


passed: Counter = Counter()


def pause_point(kind: str) -> None:
    name, _, count = os.environ.get("RESNET_ONECYCLE_PAUSE", "").partition(":")
    if name != kind:
        return
    passed[kind] += 1
    if passed[kind] != int(count or 1):
        return
    flag = Path(os.environ["RESNET_ONECYCLE_PAUSE_FLAG"])
    flag.write_text(str(os.getpid()))
    while flag.exists():
        time.sleep(0.02)


@contextmanager
def written_whole(path: str | Path, kind: str, mode: str = "wb") -> Iterator:
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)  # a leftover, or a link planted there: never written through
        with open(partial, mode) as file:
            yield file
        pause_point(kind)
        os.replace(partial, path)
    except OSError as error:
        raise write_error(path, error) from error
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:  # a read-only disk refuses even to remove what is not there
            pass


def write_text(path: str | Path, text: str, kind: str) -> None:
    with written_whole(path, kind, "w") as file:
        file.write(text)


def save_figure(fig, path: str | Path) -> None:
    """A matplotlib figure as a PNG, written whole."""
    with written_whole(path, "picture") as file:
        fig.savefig(file, format="png")
