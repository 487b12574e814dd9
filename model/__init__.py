"""Keras 3 (TensorFlow backend): the ResUNet, losses, metrics, schedules, training of one
config, post-processing, export and prediction. Ray is imported only at the edges."""
