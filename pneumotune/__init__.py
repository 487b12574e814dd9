"""pneumotune: Ray-distributed hyperparameter search for pneumothorax segmentation.

One import root. The repository keeps the pipeline's folders at its top (``data/``,
``model/``, ``search/``); the build maps them to ``pneumotune.data``, ``pneumotune.model``
and ``pneumotune.search`` (``package-dir`` in pyproject.toml), so that a user's own
``data.py`` or ``model.py`` can never shadow ours, nor ours theirs.

Importing this package imports neither TensorFlow nor Ray.
"""

from __future__ import annotations

__version__ = "0.1.0"
