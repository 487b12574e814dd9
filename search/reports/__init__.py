"""The report of a search (``pneumotune report RESULTS_DIR``): one offline HTML page and
its PNGs, from what the search wrote, running or finished.

* :mod:`.report`: reads the results folder and assembles the page.
* :mod:`.plots`: its figures, a :class:`~pneumotune.search.results.SearchSummary` in.
* :mod:`.importance`: hyperparameter importance, with Optuna's evaluator.

The page model, figure helpers and identifier guard it shares with the dataset's report
are :mod:`pneumotune.reports`.
"""
