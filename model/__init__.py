"""Keras 3 on any backend (TensorFlow by default, JAX or PyTorch; the SavedModel and
multi-worker training are TensorFlow's): the ResUNet, losses, metrics, schedules,
augmentation and sampling, the input pipeline, training of one config, inference and
evaluation, post-processing, export and prediction. Nothing here imports Ray."""
