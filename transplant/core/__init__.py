"""The model-free core: vocabularies, alignment of old to new tokens, and the plan."""
