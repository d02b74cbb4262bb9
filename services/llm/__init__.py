"""Model backends: generate an answer and return the first token's top-k log-probs."""
