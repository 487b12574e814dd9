"""Ray Tune: the typed experiment config, the search space, the trainable, the tuner and
the `pneumotune` command line."""
