"""Video-LLaVA: loading (both checkpoint layouts), the LanguageBind video tower, preprocessing, generation and
the Video-LLaVA compression family (registered here, on import, with ``llava.compression.families``)."""

from videollava.model import family as _family  # noqa: F401  (registers the Video-LLaVA family)
