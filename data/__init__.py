"""From files to arrays: DICOM reading, RLE codecs, the synthetic generator, the Ray Data
conversion, splits, augmentation and the EDA report. Nothing here imports TensorFlow."""
