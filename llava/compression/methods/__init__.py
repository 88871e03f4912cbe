"""Built-in methods. Importing this package registers every method with the registry.

Each module holds one method: its config dataclass (validated fields, one CLI flag per field), the stage
function(s) it implements and the method's own pure functions (scoring, selection, merging). What several methods
share (top-k with deterministic ties, [CLS] attention, the merge-count schedule) is in ``llava.compression.primitives``.
No method module imports another.
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
