"""Layer 2: dataset files in, training rows and token labels out.

Owns reading files (files), detecting layouts and normalizing rows (records), chat templates,
token labels and loss masks (templates) and packing (packing). May import backend.core only.
"""
