"""Tensor codecs: TensorProto and JSON to and from numpy."""
