"""Every registered feature kind, by name (a new kind: its module and one line here)."""

from __future__ import annotations

from nait_pipeline.lib.features.forward import FORWARD, TEMPLATE_PREFIX
from nait_pipeline.lib.features.gradient_store import GRADIENT_GRAPH, GRADIENTS
from nait_pipeline.lib.features.kinds import FeatureKind
from nait_pipeline.lib.features.selector_store import SELECTOR

KINDS: dict[str, FeatureKind] = {kind.name: kind for kind in [FORWARD, TEMPLATE_PREFIX, GRADIENTS, GRADIENT_GRAPH,
                                                              SELECTOR]}
