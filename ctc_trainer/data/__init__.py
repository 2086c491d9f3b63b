"""Data: sample sources, image preprocessing, synthetic data, tf.data pipelines."""
