"""A plugin that adds a model family through ``register_adapters``, without touching probe.

Arcee runs on the universal path with probe's built-ins; this plugin moves it onto the full path by
describing where its attention keeps W_Q, W_K, W_V and W_O — a ProjectionMap, not a class. Its blocks and
norms come from probe's FamilySpec for arcee.
"""

import probe
from probe.core.adapters.mapped import MappedAdapter, ProjectionMap


class ArceeFullAdapter(MappedAdapter):
    name = "arcee-full"


@probe.hookimpl
def register_adapters(register):
    register("arcee-full", ArceeFullAdapter({"arcee": ProjectionMap("ArceeAttention")}))
