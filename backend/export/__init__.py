"""Layer 8: trained results out: merged models, combined adapters, GGUF files and Ollama Modelfiles.

Owns merging and combining adapters (merge), the GGUF writer, its tokenizer metadata and its check
in llama.cpp (gguf, gguf_write, gguf_tokenizer, gguf_check, llamacpp, llamacpp_lib), the LoRA GGUF
(gguf_lora) and the Modelfile (modelfile). May import every
layer below it.
"""
