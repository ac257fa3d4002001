"""Model management as TF Serving's core: sources that find versions (``source``), the manager
that loads, serves and unloads them by version policy (``manager``), their states (``states``)
and config reloads (``server_core``). No TensorFlow and no processes here: servables are
loaded through a callable the server passes in. It may import ``config``, ``storage`` and
``errors``.
"""
