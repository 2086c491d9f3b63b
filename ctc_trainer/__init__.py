"""ctc_trainer: train CTC sequence recognizers with a pure TensorFlow 2 loop."""
