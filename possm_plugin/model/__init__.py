"""The POSSM model: configuration, tokenizer, vocabulary, network, backbones and checkpoints."""
