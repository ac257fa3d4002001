"""Tensors on the wire: TensorProto (``tensor_proto``) and TF Serving's JSON (``json_codec``) to
and from numpy, tf.Example inputs (``examples``), TFRecord framing (``tfrecord``), dtype tables
(``dtypes``) and the size checks every decoder runs before it allocates (``limits``). The lowest
layer beside ``storage``: no TensorFlow runtime, only its protos; it imports ``errors`` only.
"""
