"""Video-LLaVA: loading (both checkpoint layouts), the LanguageBind video tower, preprocessing, generation and
per-instance token compression."""
