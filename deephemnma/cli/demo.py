"""Run the whole DeepHEMNMA workflow in Scipion on built-in synthetic adenylate kinase, then summarise it.

Creates a Scipion project from the plugin's ``synthetic_ak`` template (simulate -> HEMNMA on half the particles ->
train -> predict the other half and refine the predictions -> PCA space -> groups of the predicted half along PC1 ->
group reconstructions with the predicted poses -> centroids and animation; the same groups of the HEMNMA half for
comparison), runs every protocol headless, and prints the accuracy against the ground truth (the paper's metrics:
HEMNMA's, the network's before and after the refinement), the half-map resolutions of the groups of both halves, the
time of each stage, and where the project and the result files are. The space plot, the group maps
and their FSC curves are copied to ``OUT/results``. The default sizes (1,000 of the paper's images, simulated at
256 px of 0.325 A with SNR 0.1, cropped to 64 px of 1.3 A; 30 epochs) took 3.3-4.4 minutes on a 2-core AMD EPYC;
``--count 3000 --epochs 120`` took 40 (training 23 of them); larger ones (e.g. ``--count 70000 --box 128 --pixel
0.65 --oversampling 2 --epochs 400 --arch 0 --netbox 0``) are the paper-scale run on a GPU.

Examples::

    deephemnma demo --out deephemnma-demo
    deephemnma demo --out big --count 40000 --box 128 --pixel 0.65 --oversampling 2 --epochs 100 --arch 0 \
        --netbox 0 --gpus 0
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict

import numpy as np

from deephemnma.runtime.files import atomic_path

TEMPLATE = 'synthetic_ak'
#: Labels of the template's reconstructions: the groups of the predicted half and the same slices of the HEMNMA half.
PREDICTED_MAPS, HEMNMA_MAPS = 'group reconstructions', 'HEMNMA group reconstructions'
#: Template parameters (aliases) that the command line can set.
TEMPLATE_OPTIONS = {'count': int, 'box': int, 'pixel': float, 'maxshift': float, 'oversampling': int,
                    'snr': float, 'seed': int, 'angstep': float, 'arch': int, 'epochs': int, 'batch': int,
                    'netbox': int, 'dropout': float, 'rotations': int, 'mincount': int, 'refine': str,
                    'calibration': int, 'threads': int}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', default='deephemnma-demo', help='folder for the Scipion project and the results')
    parser.add_argument('--project', default='deephemnma_demo', help='name of the Scipion project')
    for name, kind in TEMPLATE_OPTIONS.items():
        parser.add_argument(f'--{name}', type=kind, default=None, help=f'template parameter "{name}"')
    parser.add_argument('--gpus', default=None,
                        help='GPU ids for alignment, training and prediction (e.g. "0" or "0 1 2 3"); default CPU')


def main(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from deephemnma.scipion_env import prepare_scipion_environment
    prepare_scipion_environment(user_data=str(out / 'ScipionUserData'))
    from deephemnma.workflow import run_template
    values = {name: getattr(args, name) for name in TEMPLATE_OPTIONS if getattr(args, name) is not None}
    if args.gpus:
        values.update(gpu='true', gpus=args.gpus)
    start = time.time()
    project = run_template(TEMPLATE, args.project, values)
    os.chdir(project.getPath())  # Scipion's sets hold paths relative to the project folder
    summary = summarise(project, out / 'results')
    summary['minutes'] = round((time.time() - start) / 60.0, 1)
    _print_summary(summary, project.getPath(), out / 'results')
    return 0


def summarise(project, results: Path) -> Dict[str, object]:
    """Accuracy against the ground truth and the result files of a finished synthetic project."""
    from deephemnma.convert.particles import particles_from_set
    from deephemnma.workflow import find_protocol
    results.mkdir(parents=True, exist_ok=True)
    space = find_protocol(project, 'DeepHemnmaProtSpace')
    predicted = particles_from_set(space.outputParticles)
    hemnma = particles_from_set(space.outputParticles2)
    summary: Dict[str, object] = {
        'pc1_spearman_predicted': _pc1_spearman(predicted),
        'pc1_spearman_hemnma': _pc1_spearman(hemnma),
        'pc1_spearman_all': _pc1_spearman_combined(predicted, hemnma),
        'hemnma_vs_truth': _errors(hemnma), 'network_vs_truth': _errors(_network_predictions(predicted))}
    if 'predicted_angles' in predicted.extra:
        summary['refined_vs_truth'] = _errors(predicted)
        summary['refined_global_search'] = int(predicted.extra['refine_fallback'].sum())
    summary['stage_seconds'] = {run.getObjLabel(): round(run.getElapsedTime().total_seconds(), 1)
                                for run in project.getRuns(refresh=True)}
    summary['files'] = _collect_files(project, space, results)
    summary['groups'] = _group_resolutions(project, PREDICTED_MAPS)
    summary['hemnma_groups'] = _group_resolutions(project, HEMNMA_MAPS)
    summary['group_fsc05_gap_angstrom'] = max(
        predicted['halfmap_fsc05_angstrom'] - hemnma['halfmap_fsc05_angstrom']
        for predicted, hemnma in zip(summary['groups'], summary['hemnma_groups']))
    with atomic_path(results / 'summary.json') as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    return summary


def _pc1_spearman(particles) -> float:
    from scipy.stats import spearmanr
    return float(abs(spearmanr(particles.extra['space'][:, 0], particles.extra['true_label']).correlation))


def _pc1_spearman_combined(first, second) -> float:
    from scipy.stats import spearmanr
    pc1 = np.concatenate([first.extra['space'][:, 0], second.extra['space'][:, 0]])
    truth = np.concatenate([first.extra['true_label'], second.extra['true_label']])
    return float(abs(spearmanr(pc1, truth).correlation))


def _network_predictions(particles):
    """The network's own predictions of refined particles (their ``predicted_*`` columns), or the particles."""
    if 'predicted_angles' not in particles.extra:
        return particles
    network = particles.subset(np.arange(len(particles)))
    network.angles, network.shifts = particles.extra['predicted_angles'], particles.extra['predicted_shifts']
    network.amplitudes = particles.extra.get('predicted_amplitudes', particles.amplitudes)
    return network


def _errors(particles) -> Dict[str, float]:
    from deephemnma.nn.evaluate import parameter_errors
    from deephemnma.nn.targets import labels_from_particles, true_labels_from_particles
    figures = parameter_errors(labels_from_particles(particles), true_labels_from_particles(particles))
    keys = ('images', 'amp_mae', 'angle_median_deg', 'angle_mean_axis_deg', 'shift_mae_px')
    return {key: round(float(figures[key]), 3) for key in keys if key in figures}


def _collect_files(project, space, results: Path) -> list:
    from deephemnma.workflow import find_protocol
    root = Path(project.getPath())
    sources = sorted((root / space._getExtraPath()).glob('space_*.png'))
    reconstruct = find_protocol(project, 'DeepHemnmaProtReconstruct', PREDICTED_MAPS)
    sources += sorted((root / reconstruct._getExtraPath()).glob('group_*'))
    animate = find_protocol(project, 'DeepHemnmaProtAnimate')
    sources += sorted((root / animate._getExtraPath()).glob('*.pdb')) + \
        sorted((root / animate._getExtraPath()).glob('*.gif'))
    copied = []
    for source in sources:
        if source.is_file():
            shutil.copy2(source, results / source.name)
            copied.append(source.name)
    return copied


def _group_resolutions(project, label: str) -> list:
    """Images and half-map resolutions of each map of the reconstruction protocol labelled ``label``."""
    from deephemnma.workflow import find_protocol
    reconstruct = find_protocol(project, 'DeepHemnmaProtReconstruct', label)
    groups = []
    for path in sorted((Path(project.getPath()) / reconstruct._getExtraPath()).glob('group_*_fsc.json')):
        data = json.loads(path.read_text())
        halves = data.get('half_maps', {})
        groups.append({'group': path.stem.replace('_fsc', ''), 'images': data.get('images'),
                       'halfmap_fsc05_angstrom': halves.get('resolution_05_angstrom'),
                       'halfmap_fsc0143_angstrom': halves.get('resolution_0143_angstrom')})
    return groups


def _print_summary(summary: Dict[str, object], project_path: str, results: Path) -> None:
    print('\nDeepHEMNMA demo finished in {} min'.format(summary['minutes']))
    print(f'  Scipion project: {project_path}')
    print(f'  results:         {results}  (space plot, group maps, FSC curves, centroids, animation)')
    print('  Spearman |PC1 vs helix coordinate r|: predicted {pc1_spearman_predicted:.3f}, HEMNMA '
          '{pc1_spearman_hemnma:.3f}, all {pc1_spearman_all:.3f}'.format(**summary))
    for name in ('hemnma_vs_truth', 'network_vs_truth', 'refined_vs_truth'):
        if name in summary:
            print(f'  {name}: ' + ', '.join(f'{k} {v:g}' for k, v in summary[name].items()))
    if 'refined_global_search' in summary:
        print('  refined particles aligned again by the global search (outlier scores): '
              f"{summary['refined_global_search']}")
    print('  stages (s): ' + ', '.join(f'{k} {v:g}' for k, v in summary['stage_seconds'].items()))
    for name, key in (('predicted', 'groups'), ('HEMNMA', 'hemnma_groups')):
        for group in summary.get(key, []):
            print(f'  {name} ' + '{group}: {images} images, half-map FSC 0.5 at {halfmap_fsc05_angstrom:.2f} A, '
                  '0.143 at {halfmap_fsc0143_angstrom:.2f} A'.format(**group))
    if 'group_fsc05_gap_angstrom' in summary:
        print('  predicted groups vs HEMNMA groups of the same sizes: FSC 0.5 at most '
              f"{summary['group_fsc05_gap_angstrom']:.2f} A coarser")
    print(json.dumps({k: v for k, v in summary.items() if k != 'files'}))
