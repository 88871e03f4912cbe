"""Video-LLaVA evaluation: video QA data, inference and the GPT judge."""
