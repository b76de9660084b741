"""``deephemnma COMMAND ...``: the entry point that dispatches to the command modules of this package.

Every module of ``deephemnma.cli`` except this one is a command. Its docstring is its help (with usage
examples), ``add_args(parser)`` declares its arguments and ``main(args)`` runs it.

Examples::

    deephemnma --help
    deephemnma simulate --help
    deephemnma bench nma
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType
from typing import List, Optional

import deephemnma
from deephemnma import cli as cli_package
from deephemnma.runtime.errors import InputError

_NOT_COMMANDS = {'main'}


def command_names() -> List[str]:
    """The names of the available commands (the modules of ``deephemnma.cli``)."""
    return sorted(info.name for info in pkgutil.iter_modules(cli_package.__path__)
                  if info.name not in _NOT_COMMANDS and not info.name.startswith('_'))


def load_command(name: str) -> ModuleType:
    """Import the module of command ``name``."""
    return importlib.import_module(f'deephemnma.cli.{name}')


def _first_line(module_doc: Optional[str]) -> str:
    return (module_doc or '').strip().splitlines()[0] if module_doc else ''


def build_parser(selected: Optional[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the selected command's module is imported (fast start-up)."""
    parser = argparse.ArgumentParser(prog='deephemnma', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'deephemnma {deephemnma.__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in command_names():
        if selected is None or name == selected:
            module = load_command(name)
            sub = subparsers.add_parser(name, help=_first_line(module.__doc__), description=module.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_args(sub)
            sub.set_defaults(_command=module)
        else:
            subparsers.add_parser(name, help=f'(run "deephemnma {name} -h" for help)', add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code (bad input raises InputError)."""
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith('-')), None)
    parser = build_parser(selected if selected in command_names() else None)
    args = parser.parse_args(argv)
    if not getattr(args, '_command', None):
        parser.print_help()
        return 1
    if 'torch' in sys.modules:  # commands that do not compute with torch start without importing it
        from deephemnma.runtime.machine import flush_denormals
        flush_denormals()  # before torch starts its worker threads, which inherit the setting
    result = args._command.main(args)
    return int(result or 0)


def console() -> int:
    """The ``deephemnma`` program: :func:`main`, with bad input (a missing or malformed file, an impossible
    setting) reported as one line naming the file and the problem, and exit status 2."""
    try:
        return main()
    except InputError as error:
        print(f'deephemnma: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(console())
