"""Training after or around a transplant: healing, tokenizer training, extension."""
