"""Constants shared by the LLaVA-1.5 pipeline."""

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_PAD_TOKEN = "<pad>"

# OpenAI CLIP normalisation (clip-vit-large-patch14-336).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# max_new_tokens of the original evaluation scripts (evaluation.md section 1.3).
MAX_NEW_TOKENS_LOADER = 128
MAX_NEW_TOKENS_LONG = 1024
