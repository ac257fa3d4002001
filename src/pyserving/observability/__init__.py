"""What the server tells operators: Prometheus metrics (``monitoring``), request logging to
TFRecord files (``request_log``), log formatting (``logs``) and the tool that turns request logs
into warmup files (``warmup_from_log``). It may import ``config``, ``codecs``, ``runtime`` and
``storage``; the request core and the layers above report through it.
"""
