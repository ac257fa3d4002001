"""The TensorFlow Serving MNIST tutorial's programs: data loading (``data``), the exporter that
trains and writes versioned SavedModels (``export``), the client that prints the error rate
(``client``), ``pyserving mnist demo`` (``demo``) and their commands (``cli``). Like a user's
code, it talks to the server only through ``pyserving.client``.
"""
