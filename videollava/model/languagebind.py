"""The LanguageBind video tower of the original Video-LLaVA-7B, with its temporal-attention sub-layers.

``LanguageBind/LanguageBind_Video_merge`` is a CLIP ViT whose every encoder layer carries a temporal sub-layer
that transformers' ``VideoLlavaForConditionalGeneration`` port drops (videollava.md sections 2.2, 2.3, 7). This
module rebuilds it on top of transformers' own CLIP modules:

* :class:`LanguageBindVideoEncoderLayer` is a ``CLIPEncoderLayer`` (same ``self_attn`` / ``layer_norm1`` / ``mlp`` /
  ``layer_norm2``, same state-dict keys) plus ``temporal_embedding`` ``[1, T, D]``, ``temporal_layer_norm1`` and
  ``temporal_attn`` (a ``CLIPAttention``, so it runs on whatever attention backend the tower was loaded with). Its
  forward, for ``H`` of shape ``[B*T, N, D]`` with frames flattened clip-major (image ``b*T + t`` = frame ``t`` of
  clip ``b``):

  1. ``H += temporal_embedding[0, t]`` for every token of frame ``t`` (inside the residual stream);
  2. ``H = H + regroup(temporal_attn(temporal_layer_norm1(regroup(H))))`` where ``regroup`` maps
     ``[B*T, N, D] <-> [B*N, T, D]``: full, unmasked self-attention over the ``T`` frames of one spatial position
     (the [CLS] position included);
  3. the standard CLIP layer: spatial attention over the ``N`` tokens of each frame, then the MLP.

* :class:`LanguageBindVideoModel` is a ``CLIPVisionModel`` whose encoder holds those layers. ``T`` is the config's
  ``num_frames`` (8), never read from the data: the input must hold a multiple of ``T`` frames.
  ``hidden_states`` / ``output_hidden_states=-2`` work as for ``CLIPVisionModel`` (index ``-2`` = output of layer
  22 of 24, what Video-LLaVA projects), and ``output_attentions`` records the *spatial* attention only.
  ``pooler_output`` is ``post_layernorm`` of each frame's last-layer [CLS] (LanguageBind's retrieval head also
  averages it over the frames; Video-LLaVA uses neither).

State-dict keys equal LanguageBind's ``vision_model.*`` keys minus the prefix, temporal ones included
(``encoder.layers.{i}.temporal_embedding``, ``.temporal_attn.{q,k,v,out}_proj.*``, ``.temporal_layer_norm1.*``).

Nothing is patched at class level: the original-layout Video-LLaVA model
(:class:`VideoLlavaTemporalForConditionalGeneration`) is the port's model class whose constructor puts this tower
in place of the port's plain ``video_tower``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPPreTrainedModel,
    CLIPVisionEmbeddings,
)
from transformers.utils.output_capturing import OutputRecorder

DEFAULT_NUM_FRAMES = 8


class LanguageBindVideoEncoderLayer(CLIPEncoderLayer):
    """A CLIP encoder layer preceded by LanguageBind's temporal embedding and temporal-attention sub-layer."""

    def __init__(self, config: CLIPVisionConfig, num_frames: int = DEFAULT_NUM_FRAMES):
        super().__init__(config)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, config.hidden_size))
        self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.temporal_attn = CLIPAttention(config)

    def temporal_forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        """Steps 1-2 of the module docstring: ``[B*T, N, D] -> [B*T, N, D]``."""
        bt, n, d = hidden_states.shape
        t = self.num_frames
        if bt % t:
            raise ValueError(
                f"the LanguageBind video tower takes clips of exactly {t} frames (num_frames in its config); "
                f"got {bt} frames, not a multiple of {t}"
            )
        b = bt // t
        if t > 1:
            emb = self.temporal_embedding[0, :t].to(hidden_states.dtype)
            hidden_states = (hidden_states.view(b, t, n, d) + emb.view(1, t, 1, d)).view(bt, n, d)
        residual = hidden_states
        s = hidden_states.view(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)  # [B*N, T, D]
        s = self.temporal_layer_norm1(s)
        s, _ = self.temporal_attn(hidden_states=s, attention_mask=None, **kwargs)
        s = s.view(b, n, t, d).transpose(1, 2).reshape(bt, n, d)
        return residual + s

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        hidden_states = self.temporal_forward(hidden_states)
        return super().forward(hidden_states, attention_mask, **kwargs)


class LanguageBindVideoEncoder(nn.Module):
    """``CLIPEncoder`` with :class:`LanguageBindVideoEncoderLayer` layers (same ``layers.{i}`` keys)."""

    def __init__(self, config: CLIPVisionConfig, num_frames: int = DEFAULT_NUM_FRAMES):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            [LanguageBindVideoEncoderLayer(config, num_frames) for _ in range(config.num_hidden_layers)]
        )
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class LanguageBindVideoModel(CLIPVisionModel):
    """The LanguageBind video vision transformer (``LanguageBindVideo.vision_model``); see the module docstring.

    Args:
        config: the vision config (a ``CLIPVisionConfig``; LanguageBind uses exact ``gelu``).
        num_frames: ``T``, the frames of one clip (LanguageBind's ``vision_config.num_frames``, 8).
    """

    _no_split_modules = ["LanguageBindVideoEncoderLayer", "CLIPVisionEmbeddings"]
    # hidden states of every layer; attentions of the spatial self_attn only (not of temporal_attn)
    _can_record_outputs = {
        "hidden_states": CLIPEncoderLayer,
        "attentions": OutputRecorder(CLIPAttention, index=1, layer_name="self_attn"),
    }

    def __init__(self, config: CLIPVisionConfig, num_frames: int = DEFAULT_NUM_FRAMES):
        CLIPPreTrainedModel.__init__(self, config)
        self.num_frames = num_frames
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = LanguageBindVideoEncoder(config, num_frames)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LanguageBindVideoEncoderLayer):
            # LanguageBind's add_time_attn_block draws the temporal embedding with std D ** -0.5
            init.normal_(module.temporal_embedding, std=module.embed_dim**-0.5)

    def temporal_parameters(self) -> dict[str, nn.Parameter]:
        """The temporal tensors (11 per layer) by state-dict name."""
        return {k: v for k, v in self.named_parameters() if ".temporal_" in k}


def has_temporal_tower(config: VideoLlavaConfig) -> bool:
    return bool(getattr(config, "video_temporal_attention", False))


class VideoLlavaTemporalForConditionalGeneration(VideoLlavaForConditionalGeneration):
    """transformers' ``VideoLlavaForConditionalGeneration`` with the original LanguageBind video tower.

    When ``config.video_temporal_attention`` is true the constructor replaces ``model.video_tower`` (a plain
    per-frame ``CLIPVisionModel`` in the port) by a :class:`LanguageBindVideoModel` with
    ``config.video_num_frames`` frames, sharing ``config.vision_config`` (so the attention backend chosen at load
    applies to it). Everything else - the image tower, projector, language model, ``generate`` - is the port's.
    """

    def __init__(self, config: VideoLlavaConfig):
        super().__init__(config)
        if has_temporal_tower(config):
            num_frames = int(getattr(config, "video_num_frames", DEFAULT_NUM_FRAMES))
            self.model.video_tower = LanguageBindVideoModel(config.vision_config, num_frames)
            self.post_init()
