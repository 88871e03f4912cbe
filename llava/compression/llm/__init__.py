"""In-LLM visual token pruning: the method contract, engine-side scoring and schedules.

* :mod:`.base`      - :class:`LLMPruningMethod` (config base class), :class:`PruneStep` (what the engine offers a
  method before a pruning layer), :class:`RowSelection` (what a method returns per batch row), validation helpers;
* :mod:`.scoring`   - attention rows from a layer's own q/k, SparseVLM text raters, DART key norms;
* :mod:`.schedule`  - per-layer token accounting (``n_l`` per decoder layer, the layer average).

Each method's own selection rule (FastV / PyramidDrop top-k, DART pivots, SparseVLM DPC-kNN recycling, FiCoCo-L)
lives beside its config in ``llava.compression.methods.<method>``; shared top-k in ``llava.compression.primitives``.

The engine that runs them on a model lives in ``llava.compression.families.decoder_pruning``.
"""

from llava.compression.llm.base import (
    POSITION_MODES,
    LLMPruningMethod,
    PruneStep,
    RowSelection,
    check_layers,
    parse_int_list,
)

__all__ = [
    "POSITION_MODES",
    "LLMPruningMethod",
    "PruneStep",
    "RowSelection",
    "check_layers",
    "parse_int_list",
]
