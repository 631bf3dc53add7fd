"""The image model, without I/O: ``documents`` (descriptors, manifests, indexes: the one codec
of every JSON document ociforge reads or writes) and ``config`` (the runtime settings and the
image config they become). Media types and size limits are in ``ociforge.spec``."""
