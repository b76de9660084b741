"""Fault injection: every promise of the README under bad input and faults, command by command.

The promises: bad input stops a command with one line naming the file and the problem and exit status 2 (a fault
of the system: status 1, naming the path; Ctrl-C 130; SIGTERM 143), before any output is written; a failed or
killed run leaves earlier results complete and consistent; a rerun after a kill resumes with identical results,
and never reuses state of other inputs or settings; outputs never replace inputs; image paths written stay valid;
files get the user's permissions; two runs on one output do not mix. ``deephemnma bench faults`` runs this module
and counts the cases that keep their promise.

Each case names its class (``CLASSES``). Most run the ``deephemnma`` program in this process (fast); kills,
interrupts, concurrent runs and file-size limits run it as a separate process.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.images import read_stack
from deephemnma.runtime.errors import record_stop
from deephemnma.runtime.outputs import Outputs
from deephemnma.simulate.config import SimulationConfig
from deephemnma.simulate.dataset import simulate_to_disk
from deephemnma.tests.commands import Run, run

#: The classes of faults of the issue that asked for this module.
CLASSES = ('lost-or-damaged', 'silent-wrong-result', 'traceback-or-exit-code', 'partial-files', 'file-modes')
PROGRAM = [sys.executable, '-m', 'deephemnma.cli.main']


# ----------------------------------------------------------------------------------------------
# Running the program
# ----------------------------------------------------------------------------------------------
def start(*argv, limit_bytes: Optional[int] = None, umask: Optional[int] = None) -> subprocess.Popen:
    """``deephemnma ARGV`` as a separate process (optionally with a file-size limit, as a full disk)."""
    def prepare():
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a suite started in the background inherits Ctrl-C ignored
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
        if umask is not None:
            os.umask(umask)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(PROGRAM + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=prepare, env=env)


def finish(process: subprocess.Popen, timeout: float = 300) -> Run:
    """The end of a started process (its output decoded as written: carriage returns kept)."""
    out, err = process.communicate(timeout=timeout)
    return Run(process.returncode, out.decode(errors='replace'), err.decode(errors='replace'))


def run_process(*argv, **options) -> Run:
    return finish(start(*argv, **options))


def wait_for(process: subprocess.Popen, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll ``predicate`` every 50 ms while ``process`` runs; fail if it ends first or ``timeout`` seconds pass."""
    end = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError('the process ended before the awaited state (make its job longer)')
        if time.time() > end:
            raise TimeoutError('the awaited state never came')
        time.sleep(0.05)


def staged_chunks(folder: Path) -> int:
    """Finished chunks recorded in the staging folders below ``folder``."""
    return len(list(folder.glob('.deephemnma-*.partial/.work/chunks/chunk_*.npz')))


def snapshot(folder: Path) -> Dict[str, str]:
    """Every result file below ``folder`` by its content's hash (the commands' own bookkeeping beside the results,
    ``.deephemnma-*`` locks, manifests and resumable staging, left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()
            and not any(part.startswith('.deephemnma-') for part in p.relative_to(folder).parts)}


def refused(result: Run, status: int = 2, mentions: str = '') -> None:
    """The promise of a refusal: the status, one line naming the problem, no traceback."""
    assert result.status == status, (result.status, result.err[-2000:])
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith('deephemnma: '), result.err
    assert 'Traceback' not in result.err
    assert mentions in result.err, (mentions, result.err)


# ----------------------------------------------------------------------------------------------
# The data every case starts from (made once)
# ----------------------------------------------------------------------------------------------
@dataclass
class Workspace:
    root: Path

    @property
    def sim(self) -> Path:
        return self.root / 'sim'

    @property
    def star(self) -> Path:
        return self.sim / 'particles.star'

    @property
    def modes(self) -> Path:
        return self.sim / 'modes.npz'

    @property
    def model(self) -> Path:
        return self.root / 'model' / 'model.pt'

    @property
    def space(self) -> Path:
        return self.root / 'space' / 'space.pkl'

    def copy_star(self, folder: Path, edit: Optional[Callable] = None, name: str = 'particles.star') -> Path:
        """A copy of the simulated particles (absolute image paths) in ``folder``, optionally edited."""
        particles = read_particles(self.star).resolved(self.sim)
        if edit is not None:
            particles = edit(particles) or particles
        path = folder / name
        write_particles(path, particles, located_in=self.root / 'elsewhere')
        return path


SIMULATION = SimulationConfig(count=16, box=32, pixel_size=3.5, coarse='CA', amplitude_scale=60.0, snr=1.0,
                              phase_flip=True, chunk_size=8, max_shift=1.0)
#: A small simulation on the command line (C-alpha adenylate kinase, 32 px of 3.5 A).
SMALL = ['--box', '32', '--pixel-size', '3.5', '--coarse', 'CA', '--amplitude-scale', '60', '--snr', '1',
         '--max-shift', '1']


@pytest.fixture(scope='module')
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp('faults')
    workspace = Workspace(root)
    simulate_to_disk(SIMULATION, workspace.sim)
    assert run('train', '-i', workspace.star, '-o', root / 'model', '--arch', 'resnet18', '--epochs', '1',
               '--batch-size', '8', '--network-box', '32', '--validation', '2', '--test', '2', '--quiet',
               '--device', 'cpu').status == 0
    assert run('space', '-i', workspace.star, '-o', root / 'space', '--no-plot').status == 0
    return workspace


CASES: List[tuple] = []


def case(kind: str):
    """Register a case of class ``kind``."""
    assert kind in CLASSES

    def register(function):
        CASES.append(pytest.param(function, id=f'{kind}:{function.__name__}'))
        return function
    return register


def broken_promise(check, ws: 'Workspace', tmp: Path) -> Optional[str]:
    """Run one registered case; the promise it breaks (its failed assertion), or None when it is kept."""
    try:
        check(ws, tmp)
    except AssertionError as error:
        return f'{check.__name__}: {error}'
    return None


@pytest.mark.parametrize('check', CASES)
def test_promise(check, ws, tmp_path):
    assert broken_promise(check, ws, tmp_path) is None


ALIGN = ['--local-refine', '--ctf', 'phase_flipped', '--resolutions', '10', '--quiet', '--device', 'cpu']


# ----------------------------------------------------------------------------------------------
# Bad numbers on the command line: one line, status 2, nothing written
# ----------------------------------------------------------------------------------------------
def _bad_option(command: List[str], mentions: str):
    def check(ws: Workspace, tmp: Path):
        argv = [a.format(star=ws.star, modes=ws.modes, model=ws.model, space=ws.space, sim=ws.sim, out=tmp / 'out')
                for a in command]
        refused(run(*argv), 2, mentions)
        assert not (tmp / 'out').exists()
    return check


for _name, _argv, _mention in [
    ('align_chunk_size_zero', ['align', '-i', '{star}', '--modes', '{modes}', '-o', '{out}.star', '--chunk-size', '0'],
     '--chunk-size'),
    ('align_walk_from_xmipp_modes_without_their_radius',
     ['align', '-i', '{star}', '--modes', '{sim}/modes_xmipp/modes.xmd', '--reference', '{sim}/reference.pdb',
      '-o', '{out}.star', '--walk'], '--walk-cutoff'),
    ('infer_batch_size_zero', ['infer', '-m', '{model}', '-i', '{star}', '-o', '{out}.star', '--batch-size', '0'],
     '--batch-size'),
    ('infer_refine_without_modes', ['infer', '-m', '{model}', '-i', '{star}', '-o', '{out}.star', '--refine'],
     '--modes'),
    ('infer_refine_radius_zero', ['infer', '-m', '{model}', '-i', '{star}', '-o', '{out}.star', '--refine', '--modes',
                                  '{modes}', '--search-radius', '0'], '--search-radius'),
    ('infer_refine_other_modes_and_structures_unpaired',
     ['infer', '-m', '{model}', '-i', '{star}', '-o', '{out}.star', '--refine', '--modes', '{modes}', '--other-modes',
      '{modes}', '{modes}', '--other-reference', '{modes}'], '1 --other-reference for 2 --other-modes'),
    ('infer_other_modes_without_refine', ['infer', '-m', '{model}', '-i', '{star}', '-o', '{out}.star', '--other-modes',
                                          '{modes}'], 'add --refine'),
    ('reconstruct_batch_negative', ['reconstruct', '-i', '{star}', '-o', '{out}', '--batch-size', '-1'],
     '--batch-size'),
    ('simulate_count_zero', ['simulate', '-o', '{out}', '--count', '0'], '--count'),
    ('simulate_box_zero', ['simulate', '-o', '{out}', '--box', '0'], '--box'),
    ('simulate_pixel_zero', ['simulate', '-o', '{out}', '--pixel-size', '0'], '--pixel-size'),
    ('simulate_pixel_negative', ['simulate', '-o', '{out}', '--pixel-size', '-1.5'], '--pixel-size'),
    ('simulate_snr_nan', ['simulate', '-o', '{out}', '--snr', 'nan'], '--snr'),
    ('reconstruct_pixel_zero', ['reconstruct', '-i', '{star}', '-o', '{out}', '--pixel-size', '0'], '--pixel-size'),
    ('align_pixel_nan', ['align', '-i', '{star}', '--modes', '{modes}', '-o', '{out}.star', '--pixel-size', 'nan'],
     '--pixel-size'),
    ('align_angular_step_text', ['align', '-i', '{star}', '--modes', '{modes}', '-o', '{out}.star', '--angular-step',
                                 'ten'], '--angular-step'),
    ('train_epochs_zero', ['train', '-i', '{star}', '-o', '{out}', '--epochs', '0'], '--epochs'),
    ('nma_modes_zero', ['nma', '{star}', '-o', '{out}', '--modes', '0'], '--modes'),
    ('nma_cutoff_negative', ['nma', '{star}', '-o', '{out}', '--cutoff', '-5'], '--cutoff'),
    ('space_components_zero', ['space', '-i', '{star}', '-o', '{out}', '--components', '0'], '--components'),
    ('groups_min_count_zero', ['groups', '--space', '{space}', '-o', '{out}', '--min-count', '0'], '--min-count'),
    ('animate_frames_zero', ['animate', '--modes', '{modes}', '--space', '{space}', '-o', '{out}', '--frames', '0'],
     '--frames'),
]:
    _check = _bad_option(_argv, _mention)
    _check.__name__ = _name
    case('traceback-or-exit-code')(_check)


@case('traceback-or-exit-code')
def animate_one_frame(ws: Workspace, tmp: Path):
    refused(run('animate', '--modes', ws.modes, '--space', ws.space, '-o', tmp / 'out', '--frames', '1'), 2,
            'at least 2 frames')
    assert not (tmp / 'out').exists() or not any((tmp / 'out').glob('*.pdb'))


# ----------------------------------------------------------------------------------------------
# Non-finite and impossible values in files: refused before any work
# ----------------------------------------------------------------------------------------------
def _edited(column: str, value, row: int = 3):
    def edit(particles):
        values = getattr(particles, column).copy()
        values[row] = value
        setattr(particles, column, values)
    return edit


@case('silent-wrong-result')
def reconstruct_infinite_defocus(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp, _edited('defocus_u', np.inf))
    refused(run('reconstruct', '-i', star, '-o', tmp / 'maps', '--ctf', 'phase_flipped'), 2, 'defocus')
    assert not any((tmp / 'maps').glob('*.mrc'))


@case('silent-wrong-result')
def reconstruct_nan_angle(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp, _edited('angles', [np.nan, 0, 0]))
    refused(run('reconstruct', '-i', star, '-o', tmp / 'maps'), 2, 'particle 4')


@case('silent-wrong-result')
def train_nan_label(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp, _edited('amplitudes', [np.nan, 1.0, 2.0]))
    refused(run('train', '-i', star, '-o', tmp / 'model', '--epochs', '1', '--quiet'), 2, 'amplitudes')
    assert not (tmp / 'model' / 'model.pt').exists()


@case('silent-wrong-result')
def evaluate_nan_truth(ws: Workspace, tmp: Path):
    truth = ws.copy_star(tmp, _edited('shifts', [np.nan, 0.0]), name='truth.star')
    estimated = ws.copy_star(tmp, name='estimated.star')
    refused(run('evaluate', '-e', estimated, '-t', truth), 2, 'truth.star')


def _align_refuses_edited_star(ws: Workspace, tmp: Path, old: str, new: str, mentions: str) -> None:
    """``align`` on the workspace's STAR with ``old`` replaced by ``new`` stops with exit 2 mentioning ``mentions``."""
    star = tmp / 'edited.star'
    star.write_text(ws.copy_star(tmp).read_text().replace(old, new))
    refused(run('align', '-i', star, '--modes', ws.modes, '-o', tmp / 'out.star', *ALIGN), 2, mentions)


@case('silent-wrong-result')
def align_zero_pixel_size_in_file(ws: Workspace, tmp: Path):
    _align_refuses_edited_star(ws, tmp, '3.500000', '0.000000', 'pixel size')


@case('silent-wrong-result')
def align_defocus_text(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp)
    lines = star.read_text().splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith('_rlnDefocusU')][0]
    column = int(lines[header].split('#')[1]) - 1
    first_row = next(i for i in range(header, len(lines)) if '@' in lines[i])
    words = lines[first_row].split()
    words[column] = 'lots'
    lines[first_row] = ' '.join(words)
    star.write_text('\n'.join(lines) + '\n')
    refused(run('align', '-i', star, '--modes', ws.modes, '-o', tmp / 'out.star', *ALIGN), 2, 'rlnDefocusU')


@case('silent-wrong-result')
def xmd_without_pixel_size(ws: Workspace, tmp: Path):
    particles = read_particles(ws.star).resolved(ws.sim)
    particles.defocus_u = particles.defocus_v = particles.defocus_angle = None
    write_particles(tmp / 'images.xmd', particles, continuousflex_only=True)
    refused(run('align', '-i', tmp / 'images.xmd', '--modes', ws.modes, '-o', tmp / 'out.xmd', '--local-refine',
                '--ctf', 'none', '--quiet'), 2, 'no pixel size')


@case('silent-wrong-result')
def duplicated_particles(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp, lambda p: p.subset(np.r_[np.arange(len(p)), 5]))
    refused(run('align', '-i', star, '--modes', ws.modes, '-o', tmp / 'out.star', *ALIGN), 2, 'same image')


@case('silent-wrong-result')
def second_optics_group_with_another_pixel_size(ws: Workspace, tmp: Path):
    text = ws.copy_star(tmp).read_text()
    optics_row = next(line for line in text.splitlines() if line.startswith('1 opticsGroup1'))
    second = optics_row.replace('1 opticsGroup1', '2 opticsGroup2').replace('3.500000', '1.500000')
    text = text.replace(optics_row, optics_row + '\n' + second)
    rows = text.split('\n')
    last = max(i for i, line in enumerate(rows) if '@' in line)
    rows[last] = rows[last].replace(' 1 ', ' 2 ', 1) if ' 1 ' in rows[last] else rows[last]
    star = tmp / 'two_groups.star'
    star.write_text('\n'.join(rows))
    refused(run('align', '-i', star, '--modes', ws.modes, '-o', tmp / 'out.star', *ALIGN), 2, 'optics')


@case('silent-wrong-result')
def train_without_angles_for_orientation(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp, lambda p: setattr(p, 'angles', None))
    refused(run('train', '-i', star, '-o', tmp / 'model', '--epochs', '1', '--quiet'), 2, 'poses')


@case('silent-wrong-result')
def pseudoatoms_target_not_reached(ws: Workspace, tmp: Path):
    refused(run('pseudoatoms', ws.sim / 'reference_map.mrc', '-o', tmp / 'pseudo.pdb', '--target-error', '0.001',
                '--max-atoms', '20'), 2, 'above the target')
    assert not (tmp / 'pseudo.pdb').exists()


@case('silent-wrong-result')
def simulate_snr_negative(ws: Workspace, tmp: Path):
    refused(run('simulate', '-o', tmp / 'sim', '--count', '4', '--snr', '-1'), 2, 'SNR')


# ----------------------------------------------------------------------------------------------
# Malformed files
# ----------------------------------------------------------------------------------------------
@case('traceback-or-exit-code')
def empty_star_loop(ws: Workspace, tmp: Path):
    text = ws.copy_star(tmp).read_text()
    lines = [line for line in text.splitlines() if '@' not in line]
    (tmp / 'empty.star').write_text('\n'.join(lines) + '\n')
    refused(run('align', '-i', tmp / 'empty.star', '--modes', ws.modes, '-o', tmp / 'out.star', *ALIGN), 2,
            'no particles')


@case('traceback-or-exit-code')
def corrupt_model_file(ws: Workspace, tmp: Path):
    model = tmp / 'model.pt'
    model.write_bytes(os.urandom(5000))
    refused(run('infer', '-m', model, '-i', ws.star, '-o', tmp / 'out.star', '--quiet'), 2, 'model.pt')


@case('traceback-or-exit-code')
def empty_model_file(ws: Workspace, tmp: Path):
    model = tmp / 'model.pt'
    model.write_bytes(b'')
    refused(run('infer', '-m', model, '-i', ws.star, '-o', tmp / 'out.star', '--quiet'), 2, 'model.pt')


@case('traceback-or-exit-code')
def truncated_stack(ws: Workspace, tmp: Path):
    data = (ws.sim / 'particles.mrcs').read_bytes()
    (tmp / 'particles.mrcs').write_bytes(data[:len(data) // 2])
    star = ws.copy_star(tmp, lambda p: setattr(p, 'image', np.array(
        [loc.replace(str(ws.sim), str(tmp)) for loc in p.image])))
    refused(run('reconstruct', '-i', star, '-o', tmp / 'maps'), 2, 'particles.mrcs')


@case('traceback-or-exit-code')
def star_without_image_column(ws: Workspace, tmp: Path):
    _align_refuses_edited_star(ws, tmp, '_rlnImageName', '_rlnSomethingElse', 'rlnImageName')


@case('traceback-or-exit-code')
def amplitude_table_with_text(ws: Workspace, tmp: Path):
    table = tmp / 'amplitudes.txt'
    table.write_text('1 2 3\n4 five 6\n')
    refused(run('space', '-i', table, '-o', tmp / 'space'), 2, 'amplitudes.txt')


@case('traceback-or-exit-code')
def malformed_polygons(ws: Workspace, tmp: Path):
    (tmp / 'polygons.json').write_text('{"a": [[0, 0], [1, ')
    refused(run('groups', '--space', ws.space, '--method', 'polygons', '--polygons', tmp / 'polygons.json', '-o',
                tmp / 'groups'), 2, 'polygons.json')


@case('traceback-or-exit-code')
def centroids_of_wrong_width(ws: Workspace, tmp: Path):
    (tmp / 'centroids.txt').write_text('1 2\n3 4\n')
    refused(run('animate', '--modes', ws.modes, '--centroids', tmp / 'centroids.txt', '-o', tmp / 'anim'), 2,
            'centroids.txt')


@case('traceback-or-exit-code')
def structure_that_is_not_one(ws: Workspace, tmp: Path):
    (tmp / 'model.pdb').write_text('this is not a structure\n')
    refused(run('nma', tmp / 'model.pdb', '-o', tmp / 'nma'), 2, 'model.pdb')


@case('traceback-or-exit-code')
def reference_map_of_another_size(ws: Workspace, tmp: Path):
    from deephemnma.data.images import write_map
    write_map(tmp / 'ref.mrc', np.zeros((16, 16, 16), np.float32), 3.5)
    refused(run('reconstruct', '-i', ws.star, '-o', tmp / 'maps', '--reference', tmp / 'ref.mrc'), 2, 'ref.mrc')
    assert not any((tmp / 'maps').glob('*.mrc'))


@case('traceback-or-exit-code')
def missing_input_file(ws: Workspace, tmp: Path):
    refused(run('align', '-i', tmp / 'nothing.star', '--modes', ws.modes, '-o', tmp / 'out.star'), 2, 'nothing.star')


@case('traceback-or-exit-code')
def missing_stack(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp, lambda p: setattr(p, 'image', np.array([f'1@{tmp}/gone.mrcs'] * len(p))))
    refused(run('infer', '-m', ws.model, '-i', star, '-o', tmp / 'out.star', '--quiet'), 2, 'gone.mrcs')


@case('traceback-or-exit-code')
def nma_animates_a_mode_not_computed(ws: Workspace, tmp: Path):
    refused(run('nma', ws.sim / 'reference.pdb', '-o', tmp / 'nma', '--modes', '3', '--animate', '12'), 2,
            '--animate 12')
    assert not (tmp / 'nma').exists() or not any((tmp / 'nma').iterdir())


# ----------------------------------------------------------------------------------------------
# Paths: outputs never replace inputs, unwritable or impossible outputs, unknown formats, image paths
# ----------------------------------------------------------------------------------------------
@case('lost-or-damaged')
def infer_output_is_its_input(ws: Workspace, tmp: Path):
    particles = read_particles(ws.star).resolved(ws.sim)
    write_particles(tmp / 'images.xmd', particles)
    before = snapshot(tmp)
    refused(run('infer', '-m', ws.model, '-i', tmp / 'images.xmd', '-o', tmp / 'images.xmd', '--quiet'), 2,
            'also an input')
    assert snapshot(tmp) == before


@case('lost-or-damaged')
def evaluate_output_is_its_input(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp)
    before = snapshot(tmp)
    refused(run('evaluate', '-e', star, '-t', star, '-o', star), 2, 'also an input')
    assert snapshot(tmp) == before


@case('lost-or-damaged')
def pseudoatoms_output_is_its_input(ws: Workspace, tmp: Path):
    shutil.copy(ws.sim / 'reference_map.mrc', tmp / 'map.mrc')
    before = snapshot(tmp)
    refused(run('pseudoatoms', tmp / 'map.mrc', '-o', tmp / 'map.mrc'), 2, 'also an input')
    assert snapshot(tmp) == before


@case('lost-or-damaged')
def reconstruct_output_would_replace_the_reference(ws: Workspace, tmp: Path):
    shutil.copy(ws.sim / 'reference_map.mrc', tmp / 'map.mrc')
    before = snapshot(tmp)
    refused(run('reconstruct', '-i', ws.star, '-o', tmp, '--reference', tmp / 'map.mrc'), 2, 'also an input')
    assert snapshot(tmp) == before


@case('traceback-or-exit-code')
def output_under_a_file(ws: Workspace, tmp: Path):
    (tmp / 'plain').write_text('a file, not a folder')
    refused(run('space', '-i', ws.star, '-o', tmp / 'plain' / 'space'), 2, 'plain')


@case('traceback-or-exit-code')
def output_in_an_impossible_place(ws: Workspace, tmp: Path):
    refused(run('space', '-i', ws.star, '-o', '/proc/deephemnma-space'), 2, '/proc/deephemnma-space')


@case('partial-files')
def align_unknown_output_format_refused_first(ws: Workspace, tmp: Path):
    refused(run('align', '-i', ws.star, '--modes', ws.modes, '-o', tmp / 'out.txt', *ALIGN), 2, 'out.txt')
    assert list(tmp.iterdir()) == []


@case('partial-files')
def infer_unknown_output_format_refused_first(ws: Workspace, tmp: Path):
    refused(run('infer', '-m', ws.model, '-i', ws.star, '-o', tmp / 'pred.json', '--quiet'), 2, 'pred.json')
    assert list(tmp.iterdir()) == []


@case('silent-wrong-result')
def align_output_elsewhere_keeps_image_paths_valid(ws: Workspace, tmp: Path):
    data = tmp / 'data'
    shutil.copytree(ws.sim, data)  # particles.star names its stack relative to its folder
    result = run('align', '-i', data / 'particles.star', '--modes', ws.modes, '-o', tmp / 'out' / 'aligned.xmd',
                 *ALIGN)
    assert result.status == 0, result.err
    aligned = read_particles(tmp / 'out' / 'aligned.xmd')
    assert all(Path(location.split('@')[1]).is_absolute() for location in aligned.image)
    maps = run('reconstruct', '-i', tmp / 'out' / 'aligned.xmd', '-o', tmp / 'maps', '--pixel-size', '3.5')
    assert maps.status == 0, maps.err


@case('silent-wrong-result')
def group_subsets_in_another_folder_keep_image_paths_valid(ws: Workspace, tmp: Path):
    result = run('groups', '--space', ws.space, '--method', 'kmeans', '--groups', '2', '--particles', ws.star, '-o',
                 tmp / 'groups')
    assert result.status == 0, result.err
    subset = read_particles(tmp / 'groups' / 'group_001.star')
    assert all(Path(location.split('@')[1]).exists() for location in subset.image)


@case('silent-wrong-result')
def paths_inside_the_output_folder_are_written_relative(ws: Workspace, tmp: Path):
    shutil.copy(ws.sim / 'particles.mrcs', tmp / 'particles.mrcs')
    star = ws.copy_star(tmp, lambda p: setattr(p, 'image', np.array(
        [loc.replace(str(ws.sim), str(tmp)) for loc in p.image])))
    assert run('infer', '-m', ws.model, '-i', star, '-o', tmp / 'pred.star', '--quiet').status == 0
    predicted = read_particles(tmp / 'pred.star')
    assert all(location.split('@')[1] == 'particles.mrcs' for location in predicted.image)


# ----------------------------------------------------------------------------------------------
# Failed reruns leave earlier results complete; faults of the system
# ----------------------------------------------------------------------------------------------
@case('lost-or-damaged')
def groups_count_mismatch_refused_before_writing(ws: Workspace, tmp: Path):
    assert run('groups', '--space', ws.space, '--method', 'kmeans', '--groups', '2', '-o', tmp / 'g').status == 0
    before = snapshot(tmp / 'g')
    short = ws.copy_star(tmp, lambda p: p.subset(np.arange(5)))
    refused(run('groups', '--space', ws.space, '--method', 'kmeans', '--groups', '3', '--particles', short, '-o',
                tmp / 'g'), 2, 'do not match')
    assert snapshot(tmp / 'g') == before


@case('lost-or-damaged')
def groups_rerun_with_fewer_groups_leaves_no_stale_group(ws: Workspace, tmp: Path):
    assert run('groups', '--space', ws.space, '--method', 'kmeans', '--groups', '3', '--particles', ws.star, '-o',
               tmp / 'g').status == 0
    assert run('groups', '--space', ws.space, '--method', 'kmeans', '--groups', '2', '--particles', ws.star, '-o',
               tmp / 'g').status == 0
    assert sorted(p.name for p in (tmp / 'g').glob('group_*.star')) == ['group_001.star', 'group_002.star']
    assert json.loads((tmp / 'g' / 'groups.json').read_text())['groups'] == \
        [len(read_particles(tmp / 'g' / f'group_00{n}.star')) for n in (1, 2)]


@case('lost-or-damaged')
def reconstruct_failing_keeps_the_earlier_maps(ws: Workspace, tmp: Path):
    assert run('reconstruct', '-i', ws.star, '-o', tmp / 'maps').status == 0
    before = snapshot(tmp / 'maps')
    failed = run_process('reconstruct', '-i', ws.star, '-o', tmp / 'maps', '--pad', '2', limit_bytes=50_000)
    refused(failed, 1, 'maps')
    assert snapshot(tmp / 'maps') == before
    assert not list((tmp / 'maps').glob('.deephemnma-*.partial'))


@case('traceback-or-exit-code')
def disk_full_while_writing_a_space(ws: Workspace, tmp: Path):
    refused(run_process('space', '-i', ws.star, '-o', tmp / 'space', limit_bytes=1000), 1, 'space')
    assert not (tmp / 'space' / 'space.pkl').exists()


@case('lost-or-damaged')
def simulate_rerun_killed_keeps_the_finished_set(ws: Workspace, tmp: Path):
    out = tmp / 'sim'
    assert run('simulate', '-o', out, '--count', '8', *SMALL,
               '--chunk-size', '4').status == 0
    before = snapshot(out)
    process = start('simulate', '-o', out, '--count', '8000', *SMALL, '--chunk-size', '4', '--seed', '5')
    wait_for(process, lambda: staged_chunks(out) >= 1)
    process.kill()
    process.wait()
    assert snapshot(out) == before


@case('silent-wrong-result')
def simulate_killed_resumes_identically(ws: Workspace, tmp: Path):
    # 6,000 images (about 3 s): 120 took about one 50 ms poll, so a busy machine could miss the run in progress
    common = ['--count', '6000', *SMALL, '--chunk-size', '8', '--threads', '1', '--device', 'cpu']
    process = start('simulate', '-o', tmp / 'killed', *common)
    wait_for(process, lambda: staged_chunks(tmp / 'killed') >= 2)
    process.kill()
    process.wait()
    assert run('simulate', '-o', tmp / 'killed', *common).status == 0
    assert run('simulate', '-o', tmp / 'whole', *common).status == 0
    np.testing.assert_array_equal(read_stack(tmp / 'killed' / 'particles.mrcs', mmap=False),
                                  read_stack(tmp / 'whole' / 'particles.mrcs', mmap=False))


def _align_many(ws: Workspace, tmp: Path, repeat: int = 20) -> Path:
    """A larger set for the kill and interrupt cases: the 16 images repeated (as distinct locations)."""
    big = tmp / 'big'
    big.mkdir()
    stack = read_stack(ws.sim / 'particles.mrcs', mmap=False)
    from deephemnma.data.images import write_stack
    write_stack(big / 'particles.mrcs', np.concatenate([stack] * repeat), 3.5)
    particles = read_particles(ws.star)
    repeated = particles.subset(np.tile(np.arange(len(particles)), repeat))
    repeated.image = np.array([f'{i + 1}@particles.mrcs' for i in range(len(repeated))])
    write_particles(big / 'particles.star', repeated)
    return big / 'particles.star'


@case('silent-wrong-result')
def align_killed_resumes_identically(ws: Workspace, tmp: Path):
    star = _align_many(ws, tmp)
    common = ['-i', star, '--modes', ws.modes, *ALIGN, '--chunk-size', '16', '--threads', '1']
    process = start('align', '-o', tmp / 'killed.star', *common)
    wait_for(process, lambda: staged_chunks(tmp) >= 2)
    process.kill()
    process.wait()
    assert run('align', '-o', tmp / 'killed.star', *common).status == 0
    assert run('align', '-o', tmp / 'whole.star', *common).status == 0
    killed, whole = read_particles(tmp / 'killed.star'), read_particles(tmp / 'whole.star')
    np.testing.assert_array_equal(killed.amplitudes, whole.amplitudes)
    np.testing.assert_array_equal(killed.angles, whole.angles)


@case('silent-wrong-result')
def align_resume_with_another_input_starts_afresh(ws: Workspace, tmp: Path):
    star = _align_many(ws, tmp)
    common = ['--modes', ws.modes, *ALIGN, '--chunk-size', '16', '--threads', '1']
    process = start('align', '-i', star, '-o', tmp / 'out.star', *common)
    wait_for(process, lambda: staged_chunks(tmp) >= 2)
    process.kill()
    process.wait()
    other = read_particles(star)
    other.angles = other.angles + 5.0  # other starting poses: other results
    write_particles(star, other)
    assert run('align', '-i', star, '-o', tmp / 'out.star', *common).status == 0
    assert run('align', '-i', star, '-o', tmp / 'fresh.star', *common).status == 0
    np.testing.assert_array_equal(read_particles(tmp / 'out.star').angles, read_particles(tmp / 'fresh.star').angles)


@case('silent-wrong-result')
def train_resume_with_another_input_starts_afresh(ws: Workspace, tmp: Path):
    common = ['--arch', 'resnet18', '--epochs', '3', '--batch-size', '8', '--network-box', '32', '--validation', '2',
              '--test', '2', '--quiet', '--device', 'cpu', '--threads', '1']
    star = ws.copy_star(tmp)
    process = start('train', '-i', star, '-o', tmp / 'model', *common)
    wait_for(process, lambda: any((tmp / 'model').glob('.deephemnma-train.partial/checkpoint_last.pt')))
    process.kill()
    process.wait()
    other = read_particles(star)
    other.amplitudes = other.amplitudes * 2.0
    write_particles(star, other)
    assert run('train', '-i', star, '-o', tmp / 'model', *common).status == 0
    assert run('train', '-i', star, '-o', tmp / 'fresh', *common).status == 0
    import torch
    resumed = torch.load(tmp / 'model' / 'model.pt', weights_only=True)['state_dict']
    fresh = torch.load(tmp / 'fresh' / 'model.pt', weights_only=True)['state_dict']
    assert all(torch.equal(resumed[key], fresh[key]) for key in fresh)


@case('silent-wrong-result')
def infer_killed_resumes_identically(ws: Workspace, tmp: Path):
    star = _align_many(ws, tmp)
    common = ['-m', ws.model, '-i', star, '--chunk-size', '16', '--batch-size', '16', '--quiet', '--threads', '1',
              '--rotations', '8', '--readers', '0']
    process = start('infer', '-o', tmp / 'killed.star', *common)
    wait_for(process, lambda: staged_chunks(tmp) >= 2)
    process.kill()
    process.wait()
    assert run('infer', '-o', tmp / 'killed.star', *common).status == 0
    assert run('infer', '-o', tmp / 'whole.star', *common).status == 0
    np.testing.assert_array_equal(read_particles(tmp / 'killed.star').amplitudes,
                                  read_particles(tmp / 'whole.star').amplitudes)


# ----------------------------------------------------------------------------------------------
# Interrupts: one line, 130 or 143, resumable state kept
# ----------------------------------------------------------------------------------------------
def _interrupted(argv: List[str], folder: Path, signum: int, status: int):
    process = start(*argv)
    wait_for(process, lambda: staged_chunks(folder) >= 1)
    process.send_signal(signum)
    result = finish(process)
    refused(result, status, 'rerun the same command to resume')
    assert staged_chunks(folder) >= 1
    return result


@case('traceback-or-exit-code')
def simulate_ctrl_c(ws: Workspace, tmp: Path):
    argv = ['simulate', '-o', tmp / 'sim', '--count', '400', *SMALL, '--chunk-size', '4', '--threads', '1']
    _interrupted(argv, tmp / 'sim', signal.SIGINT, 130)
    assert not (tmp / 'sim' / 'particles.mrcs').exists()


@case('traceback-or-exit-code')
def align_sigterm(ws: Workspace, tmp: Path):
    star = _align_many(ws, tmp)
    _interrupted(['align', '-i', star, '--modes', ws.modes, '-o', tmp / 'out.star', *ALIGN, '--chunk-size', '16',
                  '--threads', '1'], tmp, signal.SIGTERM, 143)
    assert not (tmp / 'out.star').exists()


@case('traceback-or-exit-code')
def infer_ctrl_c(ws: Workspace, tmp: Path):
    star = _align_many(ws, tmp)
    _interrupted(['infer', '-m', ws.model, '-i', star, '-o', tmp / 'out.star', '--chunk-size', '16',
                  '--batch-size', '16', '--rotations', '8', '--quiet', '--threads', '1', '--readers', '0'], tmp,
                 signal.SIGINT, 130)


@case('traceback-or-exit-code')
def train_sigterm(ws: Workspace, tmp: Path):
    star = ws.copy_star(tmp)
    process = start('train', '-i', star, '-o', tmp / 'model', '--arch', 'resnet18', '--epochs', '50',
                    '--batch-size', '8', '--network-box', '32', '--validation', '2', '--test', '2', '--quiet',
                    '--threads', '1')
    wait_for(process, lambda: any((tmp / 'model').glob('.deephemnma-train.partial/checkpoint_last.pt')))
    process.send_signal(signal.SIGTERM)
    refused(finish(process), 143, 'rerun the same command to resume')
    assert not (tmp / 'model' / 'model.pt').exists()


@case('lost-or-damaged')
def reconstruct_interrupted_keeps_earlier_maps(ws: Workspace, tmp: Path):
    assert run('reconstruct', '-i', ws.star, '-o', tmp / 'maps').status == 0
    before = snapshot(tmp / 'maps')
    star = _align_many(ws, tmp, repeat=400)
    process = start('reconstruct', '-i', star, '-o', tmp / 'maps', '--batch-size', '8', '--pad', '2',
                    '--threads', '1')
    wait_for(process, lambda: (tmp / 'maps' / '.deephemnma-reconstruct.partial').exists())
    process.send_signal(signal.SIGINT)
    refused(finish(process), 130, 'interrupted')
    assert snapshot(tmp / 'maps') == before
    assert not list((tmp / 'maps').glob('.deephemnma-*.partial'))


@case('lost-or-damaged')
def swallowed_interrupt_never_commits(ws: Workspace, tmp: Path):
    """An interrupt that Python swallowed (raised inside a finaliser, only printed) still stops the commit."""
    (tmp / 'out').mkdir()
    (tmp / 'out' / 'result.txt').write_text('earlier')
    try:
        with pytest.raises(KeyboardInterrupt), Outputs(tmp / 'out', 'test') as outputs:
            outputs.path('result.txt').write_text('later')
            record_stop(signal.SIGINT)  # as the handler records it, without the exception it raised
            outputs.commit()
    finally:
        record_stop(None)
    assert (tmp / 'out' / 'result.txt').read_text() == 'earlier'
    assert not list((tmp / 'out').glob('.deephemnma-*.partial'))


# ----------------------------------------------------------------------------------------------
# Two runs on one output
# ----------------------------------------------------------------------------------------------
@case('lost-or-damaged')
def two_alignments_on_one_output(ws: Workspace, tmp: Path):
    star = _align_many(ws, tmp)
    argv = ['align', '-i', star, '--modes', ws.modes, '-o', tmp / 'out.star', *ALIGN, '--chunk-size', '16',
            '--threads', '1']
    first = start(*argv)
    wait_for(first, lambda: (tmp / '.deephemnma-align-out.star.lock').exists() and staged_chunks(tmp) >= 1)
    refused(run(*argv), 2, 'another run is writing')
    first.kill()
    first.wait()


@case('lost-or-damaged')
def two_simulations_in_one_folder(ws: Workspace, tmp: Path):
    # long enough (about a minute) that the second run starts while the first one writes, even on a busy machine
    argv = ['simulate', '-o', tmp / 'sim', '--count', '60000', *SMALL, '--chunk-size', '4', '--threads', '1']
    first = start(*argv)
    wait_for(first, lambda: staged_chunks(tmp / 'sim') >= 1)
    second = run_process(*argv)
    refused(second, 2, 'another run is writing')
    first.kill()
    first.wait()


# ----------------------------------------------------------------------------------------------
# File modes
# ----------------------------------------------------------------------------------------------
def _modes(folder: Path) -> Dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file() and not p.name.startswith('.')}


@case('file-modes')
def new_files_follow_the_umask_022(ws: Workspace, tmp: Path):
    assert run_process('space', '-i', ws.star, '-o', tmp / 'space', '--no-plot', umask=0o022).status == 0
    assert set(_modes(tmp / 'space').values()) == {0o644}


@case('file-modes')
def new_files_follow_the_umask_002(ws: Workspace, tmp: Path):
    assert run_process('groups', '--space', ws.space, '--method', 'kmeans', '--groups', '2', '-o', tmp / 'g',
                       umask=0o002).status == 0
    assert set(_modes(tmp / 'g').values()) == {0o664}


@case('file-modes')
def replaced_files_keep_their_mode(ws: Workspace, tmp: Path):
    assert run('space', '-i', ws.star, '-o', tmp / 'space', '--no-plot').status == 0
    os.chmod(tmp / 'space' / 'space.pkl', 0o640)
    assert run('space', '-i', ws.star, '-o', tmp / 'space', '--no-plot', '--seed', '1').status == 0
    assert _modes(tmp / 'space')['space.pkl'] == 0o640


@case('file-modes')
def single_file_outputs_follow_the_umask(ws: Workspace, tmp: Path):
    assert run_process('infer', '-m', ws.model, '-i', ws.star, '-o', tmp / 'pred.star', '--quiet',
                       umask=0o027).status == 0
    assert _modes(tmp)['pred.star'] == 0o640


@case('partial-files')
def failed_run_leaves_no_staging(ws: Workspace, tmp: Path):
    refused(run('reconstruct', '-i', ws.copy_star(tmp, _edited('angles', [np.inf, 0, 0])), '-o', tmp / 'maps'), 2)
    assert not list(tmp.rglob('.deephemnma-*.partial'))


@case('partial-files')
def finished_run_leaves_only_its_outputs(ws: Workspace, tmp: Path):
    assert run('infer', '-m', ws.model, '-i', ws.star, '-o', tmp / 'pred.star', '--quiet').status == 0
    assert sorted(p.name for p in tmp.iterdir() if not p.name.endswith(('.lock', '.json'))) == ['pred.star']
