"""Where models live: local folders and object storage (``files``: s3://, gs://, az:// through
fsspec, with a local cache of remote versions), what a model folder looks like (``layout``:
version folders, model files) and the confinement of paths to the folders an operator chose
(``paths``). The lowest layer beside ``codecs``: it imports nothing else of pyserving.
"""
