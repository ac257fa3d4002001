"""The request core: what every protocol calls to answer a request.

``dataplane.DataPlane`` takes a decoded request from any protocol layer and runs it: admission
(``admission``: bounds, deadlines, load shedding), the inline-or-thread choice (``inline``), the
inference verbs (``inference``: Predict, Classify, Regress, MultiInference), batching
(``batching``) and the answers both protocols render (``responses``). It may import ``core``,
``runtime`` (through the servable interface), ``observability``, ``config``, ``codecs``,
``storage`` and the top-level ``errors``; never a protocol, the server or the CLI.
"""
