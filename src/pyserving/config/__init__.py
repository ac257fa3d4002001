"""Which models to serve and how: ModelServerConfig and the other text-proto files TF Serving
reads, parsed at the edge into plain dataclasses (``model_config``), with the protos built
without TensorFlow (``protos``, ``proto_builder``). It may import only ``storage`` (a config file
may live in object storage) and the top-level ``errors`` and ``options``.
"""
