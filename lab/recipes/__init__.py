"""Optimization recipes: small, composable techniques, each checked before it is applied.

A recipe string joins names with ``+`` (``"bf16+sdpa+quanto-unet-int8w"``). ``parse()`` refuses
unknown names (listing close matches) and compositions that cannot work (two settings for one
slot, such as two precisions for the UNet; sequential offload with compile; ...). Recipes are
applied in a fixed order whatever the string order: precision, attention, QKV fusion, layout,
quantization, scheduler, memory, compile.

The grammar lives in ``grammar``; the techniques in one module per family (``precision``, ``attention``,
``layout``, ``compile``, ``quantization``, ``schedulers``, ``memory``). A new recipe is one entry in its
family's ``recipes()`` (plus, if it cannot combine with something, its family's ``INCOMPATIBLE``).
"""

from .base import COMPONENTS, Recipe
from .grammar import INCOMPATIBLE, ORDER, Plan, catalog, fit_to_model, fitting, get, names, parse

__all__ = ["COMPONENTS", "INCOMPATIBLE", "ORDER", "Plan", "Recipe", "catalog", "fit_to_model", "fitting", "get", "names",
           "parse"]
