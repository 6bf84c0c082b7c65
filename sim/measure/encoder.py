"""A tiny random BERT encoder in sentence-transformers' layout, and how close the compiled
encoder's sentence embeddings come to the float model's.

The encoder is ``transformers``' own ``BertModel`` (random weights from a fixed seed), its
tensors saved with or without the ``bert.`` prefix, beside a ``modules.json`` with a
Pooling module (mean or ``[CLS]``) and optionally a Normalize module, and a word-level
``tokenizer.json`` that wraps a sentence in ``[CLS]`` .. ``[SEP]``, so the importer and
``airfoil run`` see what a real sentence-transformers folder holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["TINY_BERT", "tiny_bert", "write_bert_tokenizer", "SENTENCES",
           "import_max_hidden_error", "embedding_cosine"]

#: The tiny encoder's config: four heads of 16, two layers, BERT's eps and erf GELU.
TINY_BERT = dict(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=32, type_vocab_size=2,
                 hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
#: Sentences of the tiny vocabulary (words ``w0`` ..), a few lengths.
SENTENCES = ("w1 w5 w9 w2", "w30 w4 w4 w17 w8 w11 w3", "w12 w0 w21",
             "w7 w7 w26 w19 w33 w2 w5 w14 w6 w1", "w25 w3")
#: Token ids of the special tokens after the words.
_SPECIAL = ("[UNK]", "[CLS]", "[SEP]")


def tiny_bert(path, *, prefix: bool = False, pooling: str = "mean", normalize: bool = True,
              seed: int = 0, **overrides):
    """Build a random ``transformers`` ``BertModel``, save it into ``path`` (tensors under
    ``bert.`` when ``prefix``) with ``modules.json``, the Pooling config and the
    tokenizer; return the model. Matrices N(0, 0.15^2), gains 1 + N(0, 0.1^2), biases and
    embeddings N(0, 0.1^2) (the library's initialisation makes near-constant outputs)."""
    import transformers
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = transformers.BertConfig(**{**TINY_BERT, **overrides})
    torch.manual_seed(seed)
    model = transformers.BertModel(cfg, add_pooling_layer=True).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = p.dim() == 1 and not name.endswith(".bias")
            p.copy_(torch.randn_like(p) * (0.15 if p.dim() == 2 else 0.1) + gain)
    cfg.architectures = ["BertModel"]
    cfg.save_pretrained(str(path))
    state = dict(model.state_dict())
    # The int64 position buffer older checkpoints carry (the importer ignores it).
    state["embeddings.position_ids"] = torch.arange(cfg.max_position_embeddings)[None]
    state = {("bert." if prefix else "") + k: v.contiguous() for k, v in state.items()}
    save_file(state, str(path / "model.safetensors"))
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models."
             "Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize",
                     "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(mods, indent=1))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": cfg.hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    write_bert_tokenizer(path, cfg.vocab_size)
    return model


def write_bert_tokenizer(path, vocab_size: int) -> Path:
    """Write ``tokenizer.json``: whitespace words ``w0`` .. then ``[UNK]``, ``[CLS]``,
    ``[SEP]`` as the last ids, a sentence encoded as ``[CLS] words [SEP]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    n = vocab_size - len(_SPECIAL)
    words = {f"w{i}": i for i in range(n)}
    words.update({s: n + i for i, s in enumerate(_SPECIAL)})
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", n + 1), ("[SEP]", n + 2)])
    out = Path(path) / "tokenizer.json"
    tok.save(str(out))
    return out


def sentence_ids(folder, text: str) -> list[int]:
    """The token ids of ``text`` by the folder's tokenizer, ``[CLS]`` and ``[SEP]`` in."""
    from compiler.tokenizer import load_tokenizer
    return load_tokenizer(folder).encode(text, special=True)


def float_embedding(model, ids, spec) -> torch.Tensor:
    """``transformers``' last hidden states of ``ids`` pooled as ``spec`` says."""
    from airfoil.embedding import sentence_embedding
    with torch.no_grad():
        h = model(torch.tensor([ids])).last_hidden_state[0]
    return sentence_embedding(h, spec)


def import_max_hidden_error(folder, *, seed: int = 0, tokens: int = 12) -> dict:
    """Save the tiny encoder into ``folder``, import it; the largest absolute difference
    between the float import's hidden states and ``transformers``' last_hidden_state on
    ``tokens`` random tokens, and its evidence."""
    from compiler.backends import execute
    from compiler.importers.hf import import_hf
    model = tiny_bert(folder, seed=seed)
    graph = import_hf(folder)
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, graph.shape.vocab_size, (tokens,), generator=g)
    with torch.no_grad():
        want = model(tok[None]).last_hidden_state[0].to(torch.float64)
        got = execute(graph, tok).to(torch.float64)
    return {"error": float((got - want).abs().max()),
            "hidden_range": float(want.abs().max()),
            "shape": {"layers": graph.shape.num_hidden_layers,
                      "hidden": graph.shape.hidden_size, "tokens": tokens}}


def embedding_cosine(folder, recipe=None, *, seed: int = 0) -> dict:
    """Save the tiny encoder into ``folder``, compile it with ``recipe`` (the name of a
    recipe of ``compiler/recipes``, or None: the default recipe) for ``sim_llm`` and run
    :data:`SENTENCES` on the ISA simulator; the mean and least cosine between each
    compiled embedding and the float model's."""
    from airfoil.config import load_config
    from airfoil.folder import load_folder
    from compiler.importers.hf import import_hf
    from compiler.llm_recipe import RECIPE_DIR, load_llm_recipe
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    from sim.isa_sim import IsaLLM
    model = tiny_bert(Path(folder) / "hf", seed=seed)
    config = load_config("sim_llm")
    rec = load_llm_recipe(None if recipe is None else RECIPE_DIR / f"{recipe}.yaml")
    qm = quantized_model(llm_pipeline(rec, config).run(import_hf(Path(folder) / "hf")))
    out = Path(folder) / "out"
    compile_llm(qm, config, out)
    host = IsaLLM(load_folder(out, config), config)
    spec = qm["sentence_embedding"]
    cos = []
    for text in SENTENCES:
        ids = sentence_ids(Path(folder) / "hf", text)
        got = host.embed(ids)
        want = float_embedding(model, ids, spec)
        cos.append(float(torch.nn.functional.cosine_similarity(got, want, dim=0)))
    return {"mean": sum(cos) / len(cos), "least": min(cos), "sentences": len(cos),
            "tokens": [len(sentence_ids(Path(folder) / "hf", t)) for t in SENTENCES]}
