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
import signal
import sys
from types import ModuleType
from typing import List, Optional

import deephemnma
from deephemnma import cli as cli_package
from deephemnma.runtime.errors import InputError, Terminated, record_stop

_NOT_COMMANDS = {'main'}
#: Exit statuses of the ``deephemnma`` program.
EXIT_INPUT, EXIT_SYSTEM, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


def command_names() -> List[str]:
    """The names of the available commands (the modules of ``deephemnma.cli``)."""
    return sorted(info.name for info in pkgutil.iter_modules(cli_package.__path__)
                  if info.name not in _NOT_COMMANDS and not info.name.startswith('_'))


def load_command(name: str) -> ModuleType:
    """Import the module of command ``name``."""
    return importlib.import_module(f'deephemnma.cli.{name}')


def _first_line(module_doc: Optional[str]) -> str:
    return (module_doc or '').strip().splitlines()[0] if module_doc else ''


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors end the program with one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        print(f'deephemnma: error: {self.prog}: {message}', file=sys.stderr)
        raise SystemExit(EXIT_INPUT)


def build_parser(selected: Optional[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the selected command's module is imported (fast start-up)."""
    parser = OneLineParser(prog='deephemnma', description=__doc__,
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


def _stop(signum, frame) -> None:
    """Ctrl-C or SIGTERM: recorded (so that the outputs are never committed after it), then raised."""
    record_stop(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def console(argv: Optional[List[str]] = None) -> int:
    """The ``deephemnma`` program: :func:`main`, where every failure ends as one line on stderr and an exit status:
    bad input (a missing or malformed file, an impossible setting) 2; a fault of the system (disk full, no
    permission) 1, naming the path; Ctrl-C 130 and SIGTERM 143, after the interrupted command has kept what a
    rerun resumes from (see :mod:`deephemnma.runtime.outputs`)."""
    record_stop(None)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _stop)
    if handlers[signal.SIGINT] is signal.default_int_handler:  # an ignored Ctrl-C (nohup, &) stays ignored
        signal.signal(signal.SIGINT, _stop)
    try:
        return _run(argv)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _run(argv: Optional[List[str]]) -> int:
    """:func:`main`, each failure turned into its line and exit status (see :func:`console`)."""
    try:
        return main(argv)
    except InputError as error:
        return _fail(f'error: {error}', EXIT_INPUT)
    except KeyboardInterrupt:
        return _fail('interrupted; rerun the same command to resume', EXIT_INTERRUPTED)
    except Terminated:
        return _fail('terminated; rerun the same command to resume', EXIT_TERMINATED)
    except OSError as error:
        where = f'{error.filename}: ' if error.filename else ''
        return _fail(f'error: {where}{error.strerror or error}', EXIT_SYSTEM)


def _fail(message: str, status: int) -> int:
    """End with one line on stderr, on a line of its own (progress bars still drawing are closed first)."""
    tqdm_module = sys.modules.get('tqdm')
    for bar in list(getattr(getattr(tqdm_module, 'tqdm', None), '_instances', ())):
        bar.close()
    print(f'deephemnma: {message}', file=sys.stderr)
    return status


if __name__ == '__main__':
    sys.exit(console())
