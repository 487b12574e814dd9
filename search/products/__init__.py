"""What a search or an experiment produces: a model directory (``model.keras``, the
SavedModel on TensorFlow, ``model_card.json`` with the post-processing triplet tuned on
the validation fold).

* :mod:`.export_best`: `pneumotune export`, the best trial's best checkpoint.
* :mod:`.retrain`: `pneumotune train --from-search`, the best config retrained on all
  labelled data with Ray Train data parallelism.
* :mod:`.single_run`: `pneumotune train --config`, one run of an experiment's defaults,
  no search.
"""
