"""In-LLM visual token pruning: the method contract and pure scoring / selection / schedule functions.

* :mod:`.base`      - :class:`LLMPruningMethod` (config base class), :class:`PruneStep` (what the engine offers a
  method before a pruning layer), :class:`RowSelection` (what a method returns per batch row), validation helpers;
* :mod:`.scoring`   - attention rows from a layer's own q/k, SparseVLM text raters, DART key norms;
* :mod:`.selection` - FastV/PyramidDrop top-k, DART pivots, SparseVLM DPC-kNN recycling;
* :mod:`.schedule`  - per-layer token accounting and solvers from a target budget.

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
