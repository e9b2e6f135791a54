"""Reading and writing checkpoints, tokenizers, configs and model cards."""
