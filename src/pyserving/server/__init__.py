"""Wiring and processes: one ``server.Server`` builds the layers below and serves them.

``server`` puts the manager, data plane and both protocols together for one process;
``process`` runs it with signals and exit codes; ``supervisor`` starts and restarts
--num_workers worker processes and ``peers`` lets them answer for each other (merged status,
metrics and reloads); ``tls`` reads --ssl_config_file; ``heap`` hands freed memory back to the
OS; ``checks`` are TF Serving's start-up checks of the flags. The server may import every
layer; only the CLI and integrations import it.
"""
