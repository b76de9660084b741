"""Install the DeepHEMNMA Scipion plugin: ``pip install -e .`` (``.[test]`` adds the test runner)."""
from setuptools import find_packages, setup

setup(
    name='scipion-em-deephemnma',
    version='0.1.0',
    description='DeepHEMNMA: continuous conformational heterogeneity of cryo-EM particles with normal modes '
                'and a ResNet, as a Scipion plugin with a torch core that runs on CPU, GPU and clusters',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='GPL-3.0-or-later',
    python_requires='>=3.9',
    packages=find_packages(),
    include_package_data=True,
    package_data={'deephemnma': ['protocols.conf', 'templates/*.json.template', 'tests/data/*']},
    install_requires=[
        'scipion-pyworkflow>=3.11',
        'scipion-em>=3.11',
        'scipion-em-xmipp>=3.24',
        'scipion-app>=3.8',
        'torch>=2.1',
        'torchvision>=0.16',
        'numpy>=1.23',
        'scipy>=1.9',
        'mrcfile>=1.4',
        'scikit-learn>=1.2',
        'prody>=2.4',
        'gemmi>=0.6',
        'tqdm>=4.60',
        'matplotlib>=3.5',
    ],
    extras_require={'test': ['pytest>=7', 'pytest-xdist>=3', 'ruff>=0.6'], 'umap': ['umap-learn']},
    entry_points={
        'pyworkflow.plugin': ['deephemnma = deephemnma'],
        'console_scripts': ['deephemnma = deephemnma.cli.main:console'],
    },
    classifiers=['Programming Language :: Python :: 3',
                 'License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)'],
)
