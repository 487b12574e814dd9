"""From files to arrays: DICOM reading, RLE codecs, labels, the synthetic generator, the
Ray Data conversion, patient-grouped splits, each node's copy of a dataset's arrays and
the EDA report. Nothing here imports TensorFlow (augmentation is the model's)."""
