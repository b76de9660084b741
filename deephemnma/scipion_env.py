"""The environment variables headless pyworkflow/pwem read; set before pyworkflow is first imported.

Used by the tests and by ``deephemnma demo`` (see SCIPION.md-style notes in the README)."""
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

HOSTS_CONF = '[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s\n'


def prepare_scipion_environment(user_data: str = '') -> Optional[Path]:
    """Set defaults for the Scipion variables that are not set; never overrides a real installation's.

    ``user_data``: where projects go when SCIPION_USER_DATA is unset (default: a new temporary folder).
    Returns the temporary folder when one was made, else None.
    """
    made = None
    os.environ.setdefault('SCIPION_DOMAIN', 'pwem')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    os.environ.setdefault('SCIPION_PYTHON', sys.executable)
    os.environ.setdefault('SCIPION_TESTS_CMD', f'{sys.executable} -m pyworkflow.apps.pw_run_tests')
    if 'SCIPION_USER_DATA' not in os.environ:
        if not user_data:
            user_data = made = tempfile.mkdtemp(prefix='deephemnma-scipion-')
        os.environ['SCIPION_USER_DATA'] = user_data
    if 'SCIPION_HOSTS' not in os.environ:
        hosts = Path(os.environ['SCIPION_USER_DATA']) / 'hosts.conf'
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(HOSTS_CONF)
        os.environ['SCIPION_HOSTS'] = str(hosts)
    # Protocols run in a subprocess started with "python3" from PATH: put this interpreter's folder first.
    bindir = os.path.dirname(sys.executable)
    if not os.environ.get('PATH', '').startswith(bindir):
        os.environ['PATH'] = bindir + os.pathsep + os.environ.get('PATH', '')
    return Path(made) if made else None
