"""Layer 8: trained results out: merged models, combined adapters, GGUF files and Ollama Modelfiles.

Owns merging and combining adapters (merge), the GGUF writer, its tokenizer metadata and its check
(gguf, gguf_write, gguf_tokenizer, gguf_check) and the Modelfile (modelfile). May import every
layer below it.
"""
