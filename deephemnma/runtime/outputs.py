"""One output transaction per command: outputs are built apart and committed together, under a lock.

A command that writes results opens an :class:`Outputs` for its output (a folder, or one file). Everything it
writes goes into a staging folder beside the output (``.deephemnma-COMMAND-NAME.partial/``), together with the
state it resumes from (finished chunks, the last checkpoint). :meth:`Outputs.commit` then moves every staged file
into place (one rename each, all on the same file system), removes the files an earlier run of the same command
wrote there and this run did not (a manifest ``.deephemnma-COMMAND-NAME.json`` lists them), writes the new
manifest and removes the staging folder. So:

* a run that fails, is interrupted or killed before the commit leaves the earlier results as they were;
* a rerun resumes from the staged state only when its fingerprint (the inputs' identity and every setting that
  changes the results; :func:`fingerprint`) is the one recorded there, and otherwise starts afresh;
* a second run on the same output while one is running is refused (an exclusive ``flock`` on a lock file beside
  the output, released by the system when its holder dies);
* an output that would replace one of the command's input files is refused before any work;
* files get the user's permissions: a replaced file keeps its mode, a new one gets ``0666 & ~umask``.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from deephemnma.runtime.distributed import Rank, barrier
from deephemnma.runtime.errors import InputError, raise_if_stopped
from deephemnma.runtime.files import apply_user_mode, atomic_path

#: Files of at most this size enter a fingerprint by their content (metadata); larger ones (image stacks,
#: model files) by their size and modification time.
HASHED_BYTES = 64 * 2 ** 20
FINGERPRINT_FILE = 'fingerprint.json'


def file_identity(path: str | os.PathLike) -> Dict[str, object]:
    """What identifies an input file for a resume: its absolute path and size, and its content's SHA-256 (files
    up to :data:`HASHED_BYTES`) or its modification time (larger files)."""
    path = Path(path).resolve()
    try:
        status = path.stat()
    except OSError as error:
        raise InputError(f'{path}: cannot read ({error.strerror})') from error
    identity: Dict[str, object] = {'path': str(path), 'bytes': status.st_size}
    if status.st_size <= HASHED_BYTES and path.is_file():
        identity['sha256'] = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        identity['mtime_ns'] = status.st_mtime_ns
    return identity


def fingerprint(inputs: Iterable[str | os.PathLike], settings: dict) -> dict:
    """The identity of a run: its input files (:func:`file_identity`) and its result-changing settings."""
    return {'inputs': [file_identity(path) for path in inputs if path],
            'settings': json.loads(json.dumps(settings, sort_keys=True, default=str))}


def check_apart(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """InputError when an output path is one of the input files (it would be replaced)."""
    resolved = {Path(path).resolve(): path for path in inputs if path}
    for output in filter(None, outputs):
        if Path(output).resolve() in resolved:
            raise InputError(f'{output}: the output is also an input of this command; choose another output '
                             'name (the input would be replaced)')


class Outputs:
    """The outputs of one command at ``target`` (a folder, or one file with ``single_file``): see the module
    docstring. ``command`` names the command; ``inputs`` are the files it reads (never replaced); ``settings``
    are the settings that change its results; ``resumable``: keep the staged state of an interrupted run with the
    same fingerprint. Under torchrun every rank opens it; rank 0 prepares the staging folder and commits."""

    def __init__(self, target: str | os.PathLike, command: str, inputs: Sequence[str | os.PathLike] = (),
                 settings: Optional[dict] = None, single_file: bool = False, resumable: bool = False,
                 rank: Rank = Rank()):
        self.target = Path(target)
        self.folder = self.target.parent if single_file else self.target
        self.single_file = single_file
        self.inputs = [Path(p) for p in inputs if p]
        self.rank = rank
        label = f'{command}-{self.target.name}' if single_file else command
        self.staging = self.folder / f'.deephemnma-{label}.partial'
        self.manifest = self.folder / f'.deephemnma-{label}.json'
        self.lock_path = self.folder / f'.deephemnma-{label}.lock'
        self.identity = fingerprint(self.inputs, settings or {})
        self.resumable = resumable
        self.resumed = False
        self._lock = None
        self._written: List[str] = []

    # -- opening ---------------------------------------------------------------------------------------
    def __enter__(self) -> 'Outputs':
        if self.single_file:
            check_apart([self.target], self.inputs)
        try:
            if self.rank.is_main:
                self._make_folder()
                self._acquire_lock()
                self._prepare_staging()
            barrier(self.rank)
        except BaseException as error:  # an interrupt here, after the staging folder was made, must not leave it
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def _make_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f'{self.folder}: cannot create the output folder ({error.strerror})') from error
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise InputError(f'{self.folder}: the output folder is not writable')

    def _acquire_lock(self) -> None:
        handle = open(self.lock_path, 'a+')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise InputError(f'{self.target}: another run is writing this output now (lock {self.lock_path}); '
                                 'wait for it or choose another output') from error
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f'{os.getpid()}\n')
        handle.flush()
        self._lock = handle

    def _prepare_staging(self) -> None:
        record = self.staging / FINGERPRINT_FILE
        if self.staging.exists():
            same = record.exists() and json.loads(record.read_text()) == self.identity
            if self.resumable and same:
                self.resumed = True
                return
            if self.resumable:
                print(f'deephemnma: {self.staging} holds an interrupted run with other inputs or settings: '
                      'starting afresh', file=sys.stderr)
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        with atomic_path(record) as tmp:
            Path(tmp).write_text(json.dumps(self.identity, indent=1))

    # -- writing ---------------------------------------------------------------------------------------
    def path(self, name: str | os.PathLike = '') -> Path:
        """The staged path of output ``name`` (relative to the output folder; for a single-file output, the
        file itself when ``name`` is empty). Parent folders are created."""
        if self.single_file and not name:
            name = self.target.name
        path = self.staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def work(self, name: str) -> Path:
        """A folder of resumable state inside the staging folder (not committed)."""
        path = self.staging / '.work' / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def final(self, name: str | os.PathLike = '') -> Path:
        """Where output ``name`` will be after the commit."""
        if self.single_file and not name:
            return self.target
        return self.folder / name

    # -- committing ------------------------------------------------------------------------------------
    def _staged_files(self) -> List[Path]:
        return sorted(p for p in self.staging.rglob('*') if p.is_file() and p.name != FINGERPRINT_FILE
                      and '.work' not in p.relative_to(self.staging).parts)

    def commit(self) -> List[Path]:
        """Move every staged output into place (rank 0); returns the final paths. A run asked to stop by a signal
        never commits."""
        raise_if_stopped()
        barrier(self.rank)
        if not self.rank.is_main:
            return []
        staged = self._staged_files()
        names = [str(p.relative_to(self.staging)) for p in staged]
        check_apart([self.folder / name for name in names], self.inputs)
        finals = []
        for source, name in zip(staged, names):
            final = self.folder / name
            final.parent.mkdir(parents=True, exist_ok=True)
            apply_user_mode(source, final)
            os.replace(source, final)
            finals.append(final)
        self._remove_stale(set(names))
        with atomic_path(self.manifest) as tmp:
            Path(tmp).write_text(json.dumps({'files': names}, indent=1))
        shutil.rmtree(self.staging, ignore_errors=True)
        self._written = names
        return finals

    def _remove_stale(self, names: set) -> None:
        """Remove the files the previous run of this command wrote and this one did not."""
        if not self.manifest.exists():
            return
        try:
            previous = json.loads(self.manifest.read_text()).get('files', [])
        except ValueError:
            return
        for name in previous:
            if name not in names:
                path = self.folder / name
                if path.is_file() and path.resolve() not in {p.resolve() for p in self.inputs}:
                    path.unlink()

    # -- closing ---------------------------------------------------------------------------------------
    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is not None and self._lock is not None and not self.resumable and self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
