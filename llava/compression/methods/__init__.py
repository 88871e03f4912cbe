"""Built-in methods. Importing this package registers every method with the registry.

Each module holds one method: its config dataclass (validated fields, one CLI flag per field) and the stage
function(s) it implements, composed from the pure functions in ``llava.compression.{scoring,selection,merging}``.
"""

from llava.compression.methods import (  # noqa: F401
    dart,
    divprune,
    fastervlm,
    fastv,
    ficoco,
    pdrop,
    pool,
    prumerge,
    random_select,
    sparsevlm,
    tome,
    visionzip,
    vtc_cls,
)
