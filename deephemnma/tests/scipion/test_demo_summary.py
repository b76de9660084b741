"""The main job's printed summary: rounded figures, and the JSON line that carries them unrounded."""
import contextlib
import io
import json
from pathlib import Path

import numpy as np

from deephemnma.cli.demo import _network_predictions, _print_summary
from deephemnma.data.particles import Particles

SUMMARY = {'minutes': 6.6, 'pc1_spearman_predicted': 0.540065, 'pc1_spearman_hemnma': 0.974986,
           'pc1_spearman_all': 0.76956,
           'hemnma_vs_truth': {'images': 1000.0, 'amp_mae': 14.983, 'angle_median_deg': 1.317},
           'network_vs_truth': {'images': 1000.0, 'amp_mae': 64.129, 'angle_median_deg': 98.328},
           'refined_vs_truth': {'images': 1000.0, 'amp_mae': 20.5, 'angle_median_deg': 0.54},
           'refined_global_search': 12,
           'stage_seconds': {'simulate': 75.2, 'predict then refine': 130.0},
           'groups': [{'group': 'group_001', 'images': 333, 'halfmap_fsc05_angstrom': 8.585280952198282,
                       'halfmap_fsc0143_angstrom': 3.7868920041974503}],
           'hemnma_groups': [{'group': 'group_001', 'images': 333, 'halfmap_fsc05_angstrom': 8.4,
                              'halfmap_fsc0143_angstrom': 3.7}],
           'group_fsc05_gap_angstrom': 0.185280952198282,
           'files': ['space.png']}


def test_summary_rounds_figures_and_ends_with_the_json_line():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _print_summary(SUMMARY, '/project', Path('/results'))
    lines = printed.getvalue().strip().splitlines()
    assert '  Spearman |PC1 vs helix coordinate r|: predicted 0.540, HEMNMA 0.975, all 0.770' in lines
    assert '  hemnma_vs_truth: images 1000, amp_mae 14.983, angle_median_deg 1.317' in lines
    assert '  refined_vs_truth: images 1000, amp_mae 20.5, angle_median_deg 0.54' in lines
    assert '  refined particles aligned again by the global search (outlier scores): 12' in lines
    assert '  stages (s): simulate 75.2, predict then refine 130' in lines
    assert '  predicted group_001: 333 images, half-map FSC 0.5 at 8.59 A, 0.143 at 3.79 A' in lines
    assert '  HEMNMA group_001: 333 images, half-map FSC 0.5 at 8.40 A, 0.143 at 3.70 A' in lines
    assert '  predicted groups vs HEMNMA groups of the same sizes: FSC 0.5 at most 0.19 A coarser' in lines
    figures = json.loads(lines[-1])
    assert figures['groups'][0]['halfmap_fsc05_angstrom'] == SUMMARY['groups'][0]['halfmap_fsc05_angstrom']
    assert 'files' not in figures


def test_network_predictions_of_refined_particles_are_the_networks_own():
    refined = Particles(image=np.array(['1@a.mrcs', '2@a.mrcs']), angles=np.zeros((2, 3)), shifts=np.zeros((2, 2)),
                        amplitudes=np.zeros((2, 3)),
                        extra={'predicted_angles': np.full((2, 3), 10.0), 'predicted_shifts': np.ones((2, 2)),
                               'predicted_amplitudes': np.full((2, 3), 5.0)})
    network = _network_predictions(refined)
    np.testing.assert_array_equal(network.angles, np.full((2, 3), 10.0))
    np.testing.assert_array_equal(network.shifts, np.ones((2, 2)))
    np.testing.assert_array_equal(network.amplitudes, np.full((2, 3), 5.0))
    np.testing.assert_array_equal(refined.angles, np.zeros((2, 3)), 'the refined particles are left as they are')
    plain = refined.subset(np.arange(2))
    plain.extra = {}
    assert _network_predictions(plain) is plain
