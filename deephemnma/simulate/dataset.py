"""A simulated data set on disk: images streamed chunk by chunk, resumable, with their ground truth.

:func:`simulate_to_disk` writes into a folder (file names below): the stack, STAR and .xmd metadata with the CTF
and the ground-truth poses and amplitudes, ``true_amplitudes.txt``, ``ground_truth.npz``, the centred reference
PDB, its modes (.npz and Xmipp layout) and map, and ``simulation.json`` (the configuration, the noise level and
the measured SNR) last. Finished chunks are recorded (:class:`~deephemnma.runtime.chunks.ChunkStore`), so a killed
run resumes and writes the same images as an uninterrupted one (the noise of chunk ``c`` comes from
:func:`~deephemnma.simulate.parameters.chunk_seed`; same chunk size and device type).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch

from deephemnma.data.formats import write_particles
from deephemnma.data.images import StackWriter, write_map
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.imaging.ctf import CTFParams
from deephemnma.molecule.density import atoms_to_map
from deephemnma.molecule.structure import check_fits, write_structure
from deephemnma.nma.deform import deform
from deephemnma.runtime.chunks import ChunkStore
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.runtime.outputs import Outputs, fingerprint
from deephemnma.simulate.config import SimulationConfig, validate_config
from deephemnma.simulate.parameters import ParticleParameters, chunk_seed, sample_parameters
from deephemnma.simulate.physics import CALIBRATION_COUNT, noise_std_for_snr, simulate_particles
from deephemnma.simulate.setup import SimulationSetup, setup_from_config

#: File names in a simulation folder.
STACK_NAME = 'particles.mrcs'
STAR_NAME = 'particles.star'
XMD_NAME = 'particles.xmd'
TRUTH_NAME = 'ground_truth.npz'
AMPLITUDES_NAME = 'true_amplitudes.txt'
REFERENCE_NAME = 'reference.pdb'
MAP_NAME = 'reference_map.mrc'
MODES_NAME = 'modes.npz'
MODES_FOLDER = 'modes_xmipp'
CONFIG_NAME = 'simulation.json'


def sampled_radius(setup: SimulationSetup, amplitudes: np.ndarray, limit: int = 2000) -> float:
    """Largest atom distance (Angstrom) from the centre over (up to ``limit`` evenly spaced) conformations."""
    rows = np.unique(np.linspace(0, len(amplitudes) - 1, min(limit, len(amplitudes))).astype(int))
    with torch.no_grad():
        coords = deform(setup.structure.coords, setup.modes.vectors, amplitudes[rows])
    return float(max(setup.radius, coords.norm(dim=-1).max()))


def check_setup(config: SimulationConfig, setup: SimulationSetup, params: ParticleParameters) -> Optional[str]:
    """InputError when the configuration is impossible for this molecule (image too small, ...); returns a
    warning when shifts may push the outermost atoms past the edge (see :func:`check_fits`)."""
    problems = validate_config(config)
    if problems:
        raise InputError('; '.join(problems))
    return check_fits(sampled_radius(setup, params.amplitudes), config.box, config.pixel_size, config.max_shift)


class _Files:
    """Paths of the files of a simulation folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.stack, self.star, self.xmd = folder / STACK_NAME, folder / STAR_NAME, folder / XMD_NAME
        self.truth, self.amplitudes = folder / TRUTH_NAME, folder / AMPLITUDES_NAME
        self.reference, self.map, self.modes = folder / REFERENCE_NAME, folder / MAP_NAME, folder / MODES_NAME
        self.modes_xmipp, self.config = folder / MODES_FOLDER, folder / CONFIG_NAME


def write_reference_files(outputs: _Files, setup: SimulationSetup, config: SimulationConfig) -> None:
    """Centred reference PDB, its modes (.npz and Xmipp layout) and its map at the images' sampling."""
    from deephemnma.nma.files import write_modes
    write_structure(outputs.reference, setup.structure)
    setup.modes.save(outputs.modes)
    write_modes(outputs.modes_xmipp, setup.modes, path_prefix=MODES_FOLDER)
    volume = atoms_to_map(setup.structure.coords, list(setup.structure.elements), config.box, config.pixel_size,
                          config.bfactor)
    write_map(outputs.map, volume, config.pixel_size)


def write_ground_truth(outputs: _Files, setup: SimulationSetup, config: SimulationConfig,
                       params: ParticleParameters) -> None:
    """STAR and .xmd metadata (poses, CTF, amplitudes), the amplitudes as text and everything as .npz."""
    particles = Particles(image=stack_locations(STACK_NAME, config.count), pixel_size=config.pixel_size,
                          angles=params.angles, shifts=params.shifts, amplitudes=params.amplitudes,
                          defocus_u=params.defocus_u, defocus_v=params.defocus_v,
                          defocus_angle=params.defocus_angle, voltage=config.voltage, cs=config.cs,
                          amplitude_contrast=config.amplitude_contrast)
    write_particles(outputs.star, particles)
    write_particles(outputs.xmd, particles)
    numbers = ' '.join(str(int(n)) for n in setup.modes.numbers)
    with atomic_path(outputs.amplitudes, suffix='.txt') as tmp:
        np.savetxt(tmp, params.amplitudes, fmt='%.6f',
                   header=f'ground-truth amplitudes of modes {numbers} (unit-norm mode vectors on the '
                          f'{len(setup.structure)}-atom reference); one row per image, in stack order')
    arrays = {k: v for k, v in dataclasses.asdict(params).items() if v is not None}
    with atomic_path(outputs.truth, suffix='.npz') as tmp:
        np.savez(tmp, mode_numbers=setup.modes.numbers, centre=setup.centre, **arrays)


def truth_columns(truth: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The ground truth of a ``ground_truth.npz`` as the particles' extra columns (``true_amplitudes``,
    ``true_angles`` deg, ``true_shifts`` px, ``true_label``)."""
    return {'true_amplitudes': truth['amplitudes'], 'true_angles': truth['angles'], 'true_shifts': truth['shifts'],
            'true_label': truth['labels']}


def _load_finished(files: _Files, identity: dict) -> Optional[dict]:
    """The record of a finished simulation in ``files`` with this identity (configuration and inputs), or None."""
    if not (files.config.exists() and files.stack.exists()):
        return None
    record = json.loads(files.config.read_text())
    return record if record.get('identity') == identity else None


def _inputs(config: SimulationConfig) -> List[str]:
    """The files a configuration reads (their identity is part of the simulation's)."""
    return [path for path in (config.structure, config.modes, config.amplitudes_file) if path]


def _simulate_chunks(chunks: Iterator[int], store: ChunkStore, writer: StackWriter, setup: SimulationSetup,
                     config: SimulationConfig, params: ParticleParameters, ctf: Optional[CTFParams],
                     noise_std: Optional[float], device: torch.device, batch_size: int) -> None:
    """Simulate and write each pending chunk; its record is saved only once its images are on disk."""
    for chunk in chunks:
        rows = store.chunk_range(chunk)
        part = slice(rows.start, rows.stop)
        result = simulate_particles(
            setup, params.amplitudes[part], params.angles[part], params.shifts[part], config.box,
            config.pixel_size, None if ctf is None else ctf.rows(part),
            config.snr, chunk_seed(config.seed, chunk), config.noise_before_ctf, config.snr_scope, noise_std,
            config.phase_flip, config.invert_contrast, config.oversampling, return_clean=True, device=device,
            batch_size=batch_size, snr_grid=config.snr_grid)
        writer.write(rows.start, result.images)
        writer.flush()
        noise = result.images - result.clean
        store.save(chunk, {'signal_variance': result.clean.var(axis=(1, 2), dtype=np.float64),
                           'noise_variance': noise.var(axis=(1, 2), dtype=np.float64)})


def simulate_to_disk(config: SimulationConfig, out_dir: str | os.PathLike, device: str | torch.device = 'cpu',
                     batch_size: int = 128, setup: Optional[SimulationSetup] = None,
                     progress: Optional[Callable[[Iterator[int], int], Iterator[int]]] = None) -> dict:
    """Simulate ``config.count`` images into ``out_dir`` chunk by chunk; resumable; returns the record.

    Writes (see the module constants) the stack, STAR and .xmd metadata with the CTF and the ground-truth
    poses and amplitudes, ``true_amplitudes.txt``, ``ground_truth.npz``, the centred reference PDB, its
    modes and map, and ``simulation.json`` (the configuration, the noise level and the measured SNR) last.
    Memory holds one chunk of images at a time. ``progress(iterator, total)`` may wrap the chunk loop (tqdm).
    A finished folder with the same configuration is left as it is; a killed run resumes where it stopped.
    """
    device = torch.device(device)
    settings = config.to_dict()
    identity = fingerprint(_inputs(config), {'config': settings, 'device': device.type})
    finished = _load_finished(_Files(Path(out_dir)), identity)
    if finished is not None:
        return finished
    with Outputs(out_dir, 'simulate', _inputs(config), {'config': settings, 'device': device.type},
                 resumable=True) as outputs:
        record = _simulate_into(_Files(outputs.path()), outputs.work('chunks'), config, identity, device,
                                batch_size, setup, progress)
        outputs.commit()
    return record


def _simulate_into(files: _Files, chunks_folder: Path, config: SimulationConfig, identity: dict,
                   device: torch.device, batch_size: int, setup: Optional[SimulationSetup],
                   progress: Optional[Callable[[Iterator[int], int], Iterator[int]]]) -> dict:
    """Simulate into the (staged) files, resuming from the chunks recorded in ``chunks_folder``."""
    settings = config.to_dict()
    setup = setup_from_config(config) if setup is None else setup
    params = sample_parameters(config, setup.num_modes)
    warning = check_setup(config, setup, params)
    write_reference_files(files, setup, config)
    write_ground_truth(files, setup, config, params)
    ctf = params.ctf(config)
    ctf = None if ctf is None else ctf.batched(config.count, torch.device('cpu'))
    noise_std = None
    if config.snr is not None and config.snr_scope == 'dataset':
        calibration = slice(0, min(config.count, CALIBRATION_COUNT))
        noise_std = noise_std_for_snr(setup, params.amplitudes[calibration], params.angles[calibration],
                                      params.shifts[calibration], config.box, config.pixel_size, config.snr,
                                      None if ctf is None else ctf.rows(calibration), config.oversampling,
                                      device, batch_size, config.snr_grid)
    store = ChunkStore(chunks_folder, config.count, config.chunk_size, settings={'config': settings,
                                                                                'device': device.type})
    pending = store.pending()
    chunks = progress(iter(pending), len(pending)) if progress else iter(pending)
    partial = files.stack.with_name(files.stack.name + '.partial')
    if len(pending) == store.num_chunks and partial.exists():
        partial.unlink()  # left by a run whose chunk records were removed: start afresh
    if not partial.exists() and (len(pending) < store.num_chunks and (pending or not files.stack.exists())):
        raise InputError(f'{chunks_folder} records finished chunks but the partial stack {partial} is gone: '
                         f'remove {chunks_folder.parent.parent} to start afresh')
    if pending or partial.exists():
        with StackWriter(files.stack, config.count, config.box, config.pixel_size,
                         resume=partial.exists()) as writer:
            _simulate_chunks(chunks, store, writer, setup, config, params, ctf, noise_std, device, batch_size)
    stats = store.merged()
    record = {'config': settings, 'identity': identity, 'device': device.type, 'noise_std': noise_std,
              'measured_snr': float(stats['signal_variance'].mean() / stats['noise_variance'].mean())
              if config.snr is not None else None,
              'centre': setup.centre.tolist(), 'mode_numbers': [int(n) for n in setup.modes.numbers],
              'num_atoms': len(setup.structure), 'warning': warning, 'files': {
                  'stack': STACK_NAME, 'star': STAR_NAME, 'xmd': XMD_NAME, 'ground_truth': TRUTH_NAME,
                  'amplitudes': AMPLITUDES_NAME, 'reference': REFERENCE_NAME, 'map': MAP_NAME,
                  'modes': MODES_NAME, 'modes_xmipp': f'{MODES_FOLDER}/modes.xmd'}}
    with atomic_path(files.config, suffix='.json') as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))
    return record
