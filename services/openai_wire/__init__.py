"""OpenAI's wire format for the cascade: request bodies to queries, finished queries to
chat completions, twotier's errors to OpenAI's error shape."""
