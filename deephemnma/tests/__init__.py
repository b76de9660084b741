"""Tests of the DeepHEMNMA plugin.

Importing this package prepares the environment that headless Scipion needs (SCIPION_DOMAIN, a hosts file,
SCIPION_PYTHON, a temporary SCIPION_USER_DATA, the Agg backend) unless a real Scipion already set it, so
``python -m pytest deephemnma/tests`` and ``scipion tests deephemnma.tests.test_x`` both work as they are.
The temporary SCIPION_USER_DATA is removed when the test process ends, except for the screenshots of the
viewer tests, which stay (their folder is printed).
"""
import atexit
import shutil
import sys

from deephemnma.scipion_env import prepare_scipion_environment

_temporary_user_data = prepare_scipion_environment()


def _remove_test_projects() -> None:
    screenshots = _temporary_user_data / 'screenshots'
    if not screenshots.exists():
        shutil.rmtree(_temporary_user_data, ignore_errors=True)
        return
    shutil.rmtree(_temporary_user_data / 'projects', ignore_errors=True)
    print(f'test screenshots: {screenshots}', file=sys.stderr)


if _temporary_user_data is not None:
    atexit.register(_remove_test_projects)
