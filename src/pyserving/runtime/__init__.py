"""The runtimes: the only package that runs TensorFlow. Every kind of servable (a SavedModel
session or function, a TFLite model) sits behind ``servable.Servable``; ``loader`` picks one for a
version folder, ``warmup`` replays warmup records, ``profiler`` drives TensorFlow's profiler. It
may import ``codecs`` and ``errors`` only.
"""
