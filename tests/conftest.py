import os

# Quiet TensorFlow's C++ logs in test output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
