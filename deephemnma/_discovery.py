"""Export the classes of a package's modules (protocols, viewers) so that Scipion's Domain finds them."""
import importlib
import inspect
import pkgutil
from typing import Any, Dict


def export_classes(package_name: str, namespace: Dict[str, Any], prefix: str) -> None:
    """Import every ``prefix*`` module of ``package_name`` and put its public classes in ``namespace``."""
    package = importlib.import_module(package_name)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith(prefix):
            continue
        module = importlib.import_module(f'{package_name}.{info.name}')
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__ and not name.startswith('_'):
                namespace[name] = value
