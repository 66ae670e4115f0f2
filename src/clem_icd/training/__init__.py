"""Training: the recipe format, tokenised training data, the Accelerate loop."""
