"""twotier: a two-tier LLM cascade served as an async job system."""
