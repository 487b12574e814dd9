"""The search: Ray Tune, Optuna's TPE and ASHA over an experiment's space.

The core is this folder's modules, in the order a search uses them: ``config`` (the
experiment YAML), ``space`` (Optuna's define-by-run space), ``preflight`` (will the
trials fit in memory), ``tuner`` (builds, runs and resumes the Tune search), ``searcher``
(Optuna told each trial's fidelity) and ``promotion`` (promotion ASHA), ``trainable``
(one trial, one ``model.train.fit``) and ``distributed`` (a multi-worker trial on Ray
Train), ``checkpoint`` (a trial's checkpoint format), ``trial_logs`` (a restarted trial's
earlier results kept), ``failures`` (why a trial ended badly) and ``results`` (reading a
results folder, without Ray); ``commands`` are the search's commands (`search`,
`status`, `export`, `train`), and ``experiments/`` the shipped experiment YAMLs.

The rest by what it is for:

* :mod:`.watch`: what a running search shows (console lines, `status --watch`, the Ray
  dashboard).
* :mod:`.products`: what ends in a model directory (`export`, `train`).
* :mod:`.reports`: the report of a search.
* :mod:`.replay`: a search strategy replayed on recorded learning curves, for bench/.
"""
