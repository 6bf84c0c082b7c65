#!/usr/bin/env python
"""Train the project's tiny LLaMA-style model on the text of ``pydoc_data.topics``.

The text is every topic of CPython's ``pydoc_data.topics`` joined in sorted key order,
as UTF-8 bytes; the tokenizer is byte level (token = byte value, vocabulary 256). The
last ``--heldout`` fraction of the bytes is the held-out split, never trained on.

The checkpoint is written in Hugging Face layout (``config.json`` for
``LlamaForCausalLM``, ``model.safetensors`` in float16, ``tokenizer.json`` describing
the byte tokenizer) and ``train_log.json`` with the losses. CPU only, a few minutes::

    nice -n 10 .venv/bin/python scripts/train_tiny.py --out airfoil/models/tiny-llama
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.reference import LlamaReference, LlamaShape  # noqa: E402
from compiler.tokenizer import corpus_split  # noqa: E402

SHAPE = LlamaShape(vocab_size=256, hidden_size=128, intermediate_size=384,
                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                   max_position_embeddings=512, tie_word_embeddings=True)


def evaluate(model: LlamaReference, data: torch.Tensor, seq: int) -> float:
    """Mean next-token cross-entropy (nats) over non-overlapping windows of ``seq``."""
    model.eval()
    n = (len(data) - 1) // seq
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 16):
            idx = torch.arange(i, min(n, i + 16)) * seq
            x = torch.stack([data[j:j + seq] for j in idx.tolist()])
            y = torch.stack([data[j + 1:j + seq + 1] for j in idx.tolist()])
            logits = model(x)
            tot += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
            cnt += y.numel()
    model.train()
    return tot / cnt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="airfoil/models/tiny-llama")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--heldout", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    train, held = corpus_split(a.heldout)
    train_t = torch.tensor(list(train), dtype=torch.int64)
    held_t = torch.tensor(list(held), dtype=torch.int64)
    model = LlamaReference(SHAPE)
    for name, prm in model.named_parameters():
        if prm.dim() == 2:
            torch.nn.init.normal_(prm, std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95),
                            weight_decay=0.1)
    warm = max(1, a.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / a.steps)))
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.monotonic()
    log = []
    for step in range(a.steps):
        idx = torch.randint(0, len(train_t) - a.seq - 1, (a.batch,), generator=gen)
        x = torch.stack([train_t[j:j + a.seq] for j in idx.tolist()])
        y = torch.stack([train_t[j + 1:j + a.seq + 1] for j in idx.tolist()])
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == a.steps - 1:
            rec = {"step": step, "train_loss": round(loss.item(), 4),
                   "seconds": round(time.monotonic() - t0, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
    train_seconds = time.monotonic() - t0
    # The committed checkpoint is float16: evaluate exactly what is saved.
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(prm.to(torch.float16).to(torch.float32))
    held_loss = evaluate(model, held_t, a.seq)
    train_loss = evaluate(model, train_t[:len(held_t)], a.seq)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    sd = {k: v.to(torch.float16).contiguous() for k, v in model.hf_state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = SHAPE.to_hf()
    cfg["torch_dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(
        {"airfoil_tokenizer": "bytes", "vocab_size": 256,
         "description": "token i is the byte of value i; text is UTF-8"}, indent=2) + "\n")
    summary = {"command": " ".join(["scripts/train_tiny.py"] + (argv or sys.argv[1:])),
               "seed": a.seed, "steps": a.steps, "batch": a.batch, "seq": a.seq,
               "lr": a.lr, "threads": a.threads,
               "train_seconds": round(train_seconds, 1),
               "parameters": sum(p.numel() for p in model.parameters()),
               "final_train_batch_loss": log[-1]["train_loss"],
               "train_loss_fp16": round(train_loss, 4),
               "heldout_loss_fp16": round(held_loss, 4),
               "heldout_ppl_fp16": round(math.exp(held_loss), 4),
               "heldout_bytes": len(held), "log": log}
    (out / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
