"""pneumotune: Ray-distributed hyperparameter search for pneumothorax segmentation.

One import root. The repository keeps the pipeline's folders at its top (``data/``,
``model/``, ``search/``, ``reports/``) and the root's own modules (the CLI, starting or
joining Ray, the error classes) in ``app/``; the build maps them to ``pneumotune.data``,
``pneumotune.model``, ``pneumotune.search``, ``pneumotune.reports`` and ``pneumotune``
(``package-dir`` in pyproject.toml), so that a user's own ``data.py`` or ``model.py`` can
never shadow ours, nor ours theirs.

The folder is called ``app/``, not ``pneumotune/``, so that no folder of a checkout is
importable as ``pneumotune``: Python, and Ray on every worker, put the current directory
or a job's working_dir first on ``sys.path``, and a ``pneumotune/`` folder there would be
imported instead of the installed package (a second copy of it, whose
``PneumotuneError`` is another class, or another version of the code than the driver's).
The installed package (``pip install .``, or ``pip install -e .`` in a checkout) is the
only ``pneumotune``; this package's ``__path__`` is its one folder.

Importing this package imports neither TensorFlow nor Ray.
"""

from __future__ import annotations

__version__ = "0.1.0"
