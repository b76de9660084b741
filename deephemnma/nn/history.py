"""The record of a training run: the loss history per epoch (``loss_history.csv``), its plot
(``loss_curves.png``) and the run's summary (``training_summary.json``: settings, outliers removed, split sizes,
best epochs and losses).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Optional

from deephemnma.nn.config import TrainConfig
from deephemnma.nn.data import PreparedData
from deephemnma.runtime.files import atomic_path, save_figure

HISTORY_CSV = 'loss_history.csv'
CURVES_PNG = 'loss_curves.png'
SUMMARY_FILE = 'training_summary.json'


def write_history(output_dir: Path, history: List[dict]) -> None:
    """The loss history as CSV (one row per epoch)."""
    if not history:
        return
    with atomic_path(output_dir / HISTORY_CSV) as tmp:
        with open(tmp, 'w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def read_history(path: str | Path) -> List[dict]:
    """Rows of a ``loss_history.csv`` with float values."""
    with open(path, newline='') as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot_history(path: Path, history: List[dict]) -> None:
    """Training and validation loss per epoch (total and per parameter type) as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [row['epoch'] for row in history]
    keys = [k for k in history[0] if k.startswith('validation_') and k != 'validation_loss']
    figure, axes = plt.subplots(1, 1 + len(keys), figsize=(4 * (1 + len(keys)), 3.2), squeeze=False)
    panels = [('loss', 'total')] + [(k[len('validation_'):], k[len('validation_'):]) for k in keys]
    for axis, (key, title) in zip(axes[0], panels):
        axis.plot(epochs, [row[f'train_{key}'] for row in history], label='training')
        axis.plot(epochs, [row[f'validation_{key}'] for row in history], label='validation')
        axis.set_title(f'{title} (L1)')
        axis.set_xlabel('epoch')
        axis.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def write_summary(output_dir: Path, config: TrainConfig, data: PreparedData, history: List[dict],
                  extra: Optional[dict] = None) -> dict:
    """``training_summary.json``: settings, outliers removed, split sizes, best epochs and losses."""
    summary = {'config': config.to_dict(), 'outliers_removed': data.outliers_removed,
               'outlier_threshold': config.outlier_threshold,
               'split_sizes': {k: int(len(v)) for k, v in data.split.items()},
               'epochs_run': len(history), 'final': history[-1] if history else None, **(extra or {})}
    with atomic_path(output_dir / SUMMARY_FILE) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float))
    return summary
