"""Model importers: Hugging Face layout (:mod:`.hf`) and torch modules (:mod:`.torch_module`)."""
