"""pneumotune: Ray-distributed hyperparameter search for pneumothorax segmentation.

One import root. The repository keeps the pipeline's folders at its top (``data/``,
``model/``, ``search/``, ``reports/``); the build maps them to ``pneumotune.data``,
``pneumotune.model``, ``pneumotune.search`` and ``pneumotune.reports`` (``package-dir`` in
pyproject.toml), so that a user's own ``data.py`` or ``model.py`` can never shadow ours,
nor ours theirs.

Importing this package imports neither TensorFlow nor Ray.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
if not (_HERE / "data").is_dir() and (_HERE.parent / "data" / "__init__.py").is_file():
    # Imported from a source checkout (this folder, not an installed copy): Python looks
    # for subpackages in __path__, and in the checkout they sit beside this folder. Ray
    # puts the driver's working directory first on its workers' sys.path, so a search
    # started from the repository's root imports this folder even when a wheel is
    # installed; without this line its workers would find no pneumotune.data.
    __path__.append(str(_HERE.parent))
