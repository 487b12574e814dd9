"""Watching a search: what a running search shows, where, without changing what it does.

* :mod:`.progress`: the driver's console, one line per event (a trial started, an epoch,
  how a trial ended), instead of Tune's tables.
* :mod:`.table`: the trial table of `pneumotune status RESULTS --watch`, redrawn from the
  results folder (no Ray) until every trial has finished.
* :mod:`.trial_telemetry`: what the Ray dashboard shows of each trial: its actor's name,
  its log lines and its Prometheus metrics.
"""
