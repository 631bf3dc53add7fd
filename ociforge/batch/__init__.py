"""Many images from one file (``images.toml``): the model (``model.py``, pydantic, loaded only
by push-all and the tools built on it) and the run (``run.py``: one session per registry).

Nothing is imported here, so that importing ``ociforge.batch.run`` for its types does not load
pydantic on a plain push's start-up path.
"""
