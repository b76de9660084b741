"""Run the plugin's workflow templates headless: create a Scipion project and run its protocols in order.

Templates live in ``deephemnma/templates/NAME.json.template`` (Scipion lists them as ``deephemnma-NAME`` in its
GUI and ``scipion template`` command). This module resolves their ``~Label|default|type|alias~`` parameters with
pyworkflow's own template class, loads the protocols into a new project and launches them one after the other,
waiting for each (the fastest headless route; see the README).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from pyworkflow.project import Manager, Project
from pyworkflow.template import LocalTemplate

TEMPLATES_DIR = Path(__file__).parent / 'templates'


def template_path(name: str) -> Path:
    """The file of template ``name`` (without the ``.json.template`` suffix)."""
    path = TEMPLATES_DIR / f'{name}.json.template'
    if not path.exists():
        available = sorted(p.name.replace('.json.template', '') for p in TEMPLATES_DIR.glob('*.json.template'))
        raise ValueError(f'no workflow template "{name}" (available: {", ".join(available)})')
    return path


def resolve_template(name: str, values: Dict[str, object]) -> str:
    """The template's JSON with environment variables expanded and parameters set by alias (others default)."""
    template = LocalTemplate('deephemnma', str(template_path(name)))
    template.replaceEnvVariables()
    template.parseContent()
    for alias, value in values.items():
        if not template.setParamValue(alias, str(value)):
            raise ValueError(f'template "{name}" has no parameter "{alias}"')
    template._replaceFields()
    return ''.join(template.getContent())


def run_template(name: str, project_name: str, values: Dict[str, object],
                 report: Callable[[str], None] = print) -> Project:
    """Create ``project_name`` from template ``name`` and run its protocols in order; returns the project.

    A protocol that fails stops the run with its error and the tail of its log.
    """
    manager = Manager()
    if manager.hasProject(project_name):
        manager.deleteProject(project_name)
    project = manager.createProject(project_name)
    run_workflow(project, resolve_template(name, values), report)
    return project


def run_workflow(project: Project, json_text: str, report: Callable[[str], None] = print) -> None:
    """Load the protocols of a workflow (JSON) into ``project`` and run them in order, waiting for each."""
    previous = os.getcwd()
    os.chdir(project.getPath())
    try:
        created = project.loadProtocols(jsonStr=json_text)
        _restore_labels(project, created, json.loads(json_text))
        for protocol in _protocols_in_order(project):
            _launch(project, protocol, report)
    finally:
        os.chdir(previous)


def _restore_labels(project: Project, created: Dict[str, object], entries: List[dict]) -> None:
    """Give the protocols the labels and comments of the template: pyworkflow's ``loadProtocols`` passes them
    to the protocol constructor, which drops them (``Step.__init__`` does not forward its keyword arguments)."""
    for entry in entries:
        protocol = created.get(entry['object.id'])
        if protocol is None or 'object.label' not in entry:
            continue
        protocol.setObjLabel(entry['object.label'])
        protocol.setObjComment(entry.get('object.comment', ''))
        project.saveProtocol(protocol)


def _protocols_in_order(project: Project) -> List:
    return sorted(project.getRuns(refresh=True), key=lambda p: p.getObjId())


def _launch(project: Project, protocol, report: Callable[[str], None]) -> None:
    label = protocol.getObjLabel() or protocol.getClassName()
    report(f'[{time.strftime("%H:%M:%S")}] running {label} ...')
    start = time.time()
    project.launchProtocol(protocol, wait=True)
    protocol = project.getProtocol(protocol.getObjId())
    if not protocol.isFinished():
        raise RuntimeError(f'{label} failed: {protocol.getErrorMessage()}\n{_log_tail(protocol)}')
    report(f'[{time.strftime("%H:%M:%S")}] {label} finished in {time.time() - start:.0f} s')


def _log_tail(protocol, lines: int = 30) -> str:
    for log in protocol.getLogPaths()[::-1]:
        path = Path(protocol.getProject().getPath()) / log if not os.path.isabs(log) else Path(log)
        if path.exists() and path.stat().st_size:
            return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
    return '(no log)'


def find_protocol(project: Project, class_name: str, label: Optional[str] = None):
    """The last protocol of ``class_name`` in ``project`` (with that ``label`` when given)."""
    matches = [p for p in project.getRuns(refresh=True)
               if p.getClassName() == class_name and label in (None, p.getObjLabel())]
    if not matches:
        raise LookupError(f'no {class_name} protocol{f" labelled {label!r}" if label else ""} in project '
                          f'{project.getName()}')
    return matches[-1]
