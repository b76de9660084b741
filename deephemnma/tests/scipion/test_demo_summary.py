"""The main job's printed summary: rounded figures, and the JSON line that carries them unrounded."""
import contextlib
import io
import json
from pathlib import Path

from deephemnma.cli.demo import _print_summary

SUMMARY = {'minutes': 6.6, 'pc1_spearman_predicted': 0.540065, 'pc1_spearman_hemnma': 0.974986,
           'pc1_spearman_all': 0.76956,
           'hemnma_vs_truth': {'images': 1000.0, 'amp_mae': 14.983, 'angle_median_deg': 1.317},
           'network_vs_truth': {'images': 1000.0, 'amp_mae': 64.129, 'angle_median_deg': 98.328},
           'groups': [{'group': 'group_001', 'images': 333, 'halfmap_fsc05_angstrom': 8.585280952198282,
                       'halfmap_fsc0143_angstrom': 3.7868920041974503}],
           'files': ['space.png']}


def test_summary_rounds_figures_and_ends_with_the_json_line():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _print_summary(SUMMARY, '/project', Path('/results'))
    lines = printed.getvalue().strip().splitlines()
    assert '  Spearman |PC1 vs helix coordinate r|: predicted 0.540, HEMNMA 0.975, all 0.770' in lines
    assert '  hemnma_vs_truth: images 1000, amp_mae 14.983, angle_median_deg 1.317' in lines
    assert '  group_001: 333 images, half-map FSC 0.5 at 8.59 A, 0.143 at 3.79 A' in lines
    figures = json.loads(lines[-1])
    assert figures['groups'][0]['halfmap_fsc05_angstrom'] == SUMMARY['groups'][0]['halfmap_fsc05_angstrom']
    assert 'files' not in figures
