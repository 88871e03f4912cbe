"""An lmms-eval plugin: run any lmms-eval task on our checkpoints with any compression method.

    pip install -e ".[lmms]"   # or `make install` (the lean install: see requirements-lmms.txt)
    lmms-eval --model vtc_llava --model_args pretrained=checkpoints/llava-v1.5-7b,method=fastervlm,visual_token_num=64 \\
        --tasks pope,mme,scienceqa_img --batch_size 8 --log_samples --output_path logs/

lmms-eval 0.7 finds external models through the ``lmms_eval.models`` entry-point group: ``pyproject.toml`` points it
at :func:`manifests` here (``vtc_llava``) and at ``videollava.eval.lmms_video_plugin:manifests`` (``vtc_videollava``).
This module imports nothing heavy: lmms-eval loads every entry point whenever it builds its model registry.

* :mod:`~llava.eval.lmms_plugin.base`: the shared lmms-eval model class (``--model_args``, batching, stop strings);
* :mod:`~llava.eval.lmms_plugin.model_args`: ``--model_args`` parsed with the ``--method`` CLI's flags;
* :mod:`~llava.eval.lmms_plugin.continuation`: ``loglikelihood`` of a continuation on a compressed model;
* :mod:`~llava.eval.lmms_plugin.token_counts`: the per-sample visual-token counts in lmms-eval's logged samples;
* :mod:`~llava.eval.lmms_plugin.llava_model`: ``vtc_llava`` (LLaVA-1.5 and LLaVA-NeXT, both layouts).
"""

from __future__ import annotations

LLAVA_MODEL_ID = "vtc_llava"
LLAVA_CLASS_PATH = "llava.eval.lmms_plugin.llava_model.VTCLlava"


def manifests():
    """The entry point's payload: lmms-eval's ``ModelManifest`` of ``vtc_llava``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=LLAVA_MODEL_ID, simple_class_path=LLAVA_CLASS_PATH)]
