"""Tests of the DeepHEMNMA plugin.

Importing this package prepares the environment that headless Scipion needs (SCIPION_DOMAIN, a hosts file,
SCIPION_PYTHON, a temporary SCIPION_USER_DATA, the Agg backend) unless a real Scipion already set it, so
``python -m pytest deephemnma/tests`` and ``scipion tests deephemnma.tests.test_x`` both work as they are.
"""
from ..scipion_env import prepare_scipion_environment

prepare_scipion_environment()
