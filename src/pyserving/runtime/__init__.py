"""The SavedModel runtime: the only package that runs TensorFlow."""
