"""From a closure to an image: layer recipes, the customisation layer, config and manifest.

``plan_image`` turns a source (closure, dev shell environment, options) into an
:class:`ImagePlan` whose layers are reopenable recipes; ``ImagePlan.finish`` serialises config
and manifest once the layers' digests are known, giving a :class:`BuiltImage`. Nothing here
talks to a registry or writes a file: the sinks and ``publish/`` do.
"""

from __future__ import annotations

from ociforge.assemble.plan import (
    BuiltImage,
    ImageOptions,
    ImagePlan,
    PlannedLayer,
    host_system,
    plan_image,
    plan_source,
)

__all__ = [
    "BuiltImage",
    "ImageOptions",
    "ImagePlan",
    "PlannedLayer",
    "host_system",
    "plan_image",
    "plan_source",
]
