#!/usr/bin/python3
"""Independent PyTorch reference for ringtrain's model (SPEC §3, §4.1, §4.3).

Written from the SPEC's math in plain torch ops; imports nothing of ringtrain.
Run with Debian's /usr/bin/python3 (python3-torch, python3-h5py).

  torch_reference.py golden IN.h5 OUT.h5 [--dtype float64|float32]
      IN.h5: root attributes vocab_size, hidden_size, intermediate_size,
        num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
        rms_norm_eps, tie_word_embeddings, rope_theta, position (rope|alibi|none),
        lr, beta1, beta2, eps, weight_decay, grad_clip, steps, no_decay_norms,
        no_decay_embeddings; /model/<HF name> weights; /inputs, /targets int32
        [B,T] (target -1 is ignored).
        Optional memory_tokens, segment_length, bptt_segments (> 0 tokens:
        recurrent memory, SPEC §5; /logits then holds the last segment's).
      OUT.h5: /loss, /logits [B,T,V], /grad/<name>, /grad_norm (first step,
        before clipping), /adamw_losses [steps] (loss before each AdamW step on
        the same batch, constant lr, global-norm clipping), /final/<name>.
  torch_reference.py bench --seq-len T [--steps N --warmup W --threads K ...]
      times the same model trained with torch.optim.AdamW in eager mode and
      prints one JSON line.
  torch_reference.py selftest
      checks autograd against finite differences on a tiny model.
"""
import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time

import h5py
import numpy as np
import torch


# ---- the model (SPEC §3) ---------------------------------------------------------

def rms_norm(x, w, eps):
    # x [..., d] -> x / sqrt(mean(x^2) + eps) * w
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(T, head_dim, theta, dtype):
    # inv_freq[j] = 1 / theta^(2j/h), angle in float64 from integer positions
    j = torch.arange(head_dim // 2, dtype=torch.float64)
    inv_freq = 1.0 / theta ** (2.0 * j / head_dim)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    ang = torch.cat((ang, ang), dim=-1)  # [T, h]: pairs (j, j + h/2)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def alibi_slopes(n):
    # Press et al.: powers of two, then every other slope of 2c
    def pow2(k):
        start = 2.0 ** (-8.0 / k)
        return [start ** (i + 1) for i in range(k)]
    c = 2 ** int(math.floor(math.log2(n)))
    s = pow2(c)
    if c < n:
        s += pow2(2 * c)[0::2][: n - c]
    return torch.tensor(s, dtype=torch.float64)


def attention(q, k, v, cfg, dtype):
    # q [B,T,H,h], k,v [B,T,G,h] -> [B,T,H,h]; kv head g serves heads g*H/G ...
    B, T, H, h = q.shape
    G = k.shape[2]
    k = k.repeat_interleave(H // G, dim=2)
    v = v.repeat_interleave(H // G, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B,H,T,h]
    s = q @ k.transpose(-1, -2) / math.sqrt(h)
    i = torch.arange(T)
    if cfg["position"] == "alibi":
        dist = (i[:, None] - i[None, :]).to(torch.float64)
        s = s - (alibi_slopes(H)[:, None, None] * dist[None]).to(dtype)
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    return (torch.softmax(s, dim=-1) @ v).transpose(1, 2)


def body(params, x, cfg, dtype):
    """input embeddings x [B,T,d] -> the last layer's output [B,T,d] (before the final norm)"""
    H, G, h = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    B, T, _ = x.shape
    if cfg["position"] == "rope":
        cos, sin = rope_cos_sin(T, h, cfg["rope_theta"], dtype)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    for l in range(cfg["num_hidden_layers"]):
        p = lambda n: params[f"model.layers.{l}.{n}"]
        a = rms_norm(x, p("input_layernorm.weight"), eps)
        q = (a @ p("self_attn.q_proj.weight").T).view(B, T, H, h)
        k = (a @ p("self_attn.k_proj.weight").T).view(B, T, G, h)
        v = (a @ p("self_attn.v_proj.weight").T).view(B, T, G, h)
        if cfg["position"] == "rope":
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        x = x + attention(q, k, v, cfg, dtype).reshape(B, T, H * h) @ p("self_attn.o_proj.weight").T
        m = rms_norm(x, p("post_attention_layernorm.weight"), eps)
        gate = m @ p("mlp.gate_proj.weight").T
        up = m @ p("mlp.up_proj.weight").T
        x = x + (torch.nn.functional.silu(gate) * up) @ p("mlp.down_proj.weight").T
    return x


def head(params, x, cfg):
    w = params["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    return rms_norm(x, params["model.norm.weight"], cfg["rms_norm_eps"]) @ w.T


def forward(params, tokens, cfg, dtype):
    """tokens [B,T] -> logits [B,T,V]"""
    return head(params, body(params, params["model.embed_tokens.weight"][tokens], cfg, dtype), cfg)


def rmt_loss(params, tokens, targets, cfg, dtype):
    """SPEC §5: segments [mem; tokens; mem], positions restarting per segment,
    mem_{k+1} = last layer's output at the write rows, loss on token rows.
    Memory entering segment k >= 1 is detached for K = 0, or when k % K == 0."""
    M, S, K = cfg["memory_tokens"], cfg["segment_length"], cfg["bptt_segments"]
    B, T = tokens.shape
    mem = params["model.memory.embeddings"][None].expand(B, M, -1)
    total, count, logits = 0.0, 0, None
    for k in range(T // S):
        if k >= 1 and (K == 0 or (K > 0 and k % K == 0)):
            mem = mem.detach()
        emb = params["model.embed_tokens.weight"][tokens[:, k * S:(k + 1) * S]]
        out = body(params, torch.cat([mem, emb, mem], dim=1), cfg, dtype)
        logits = head(params, out[:, M:M + S], cfg)
        tgt = targets[:, k * S:(k + 1) * S].reshape(-1)
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt, ignore_index=-1, reduction="sum")
        count += int((tgt >= 0).sum())
        mem = out[:, M + S:]
    return total / count, logits


def loss_fn(logits, targets):
    # mean over the targets that are not ignored (-1)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=-1)


# ---- golden ---------------------------------------------------------------------------

CONFIG_INT = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
              "steps", "no_decay_norms", "no_decay_embeddings"]
CONFIG_FLOAT = ["rms_norm_eps", "rope_theta", "lr", "beta1", "beta2", "eps", "weight_decay",
                "grad_clip"]


def read_input(path, dtype):
    with h5py.File(path, "r") as f:
        cfg = {k: int(f.attrs[k]) for k in CONFIG_INT}
        cfg.update({k: float(f.attrs[k]) for k in CONFIG_FLOAT})
        for k in ["memory_tokens", "segment_length", "bptt_segments"]:
            cfg[k] = int(f.attrs[k]) if k in f.attrs else 0
        pos = f.attrs["position"]
        cfg["position"] = pos.decode() if isinstance(pos, bytes) else str(pos)
        params = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                params[name] = torch.tensor(obj[()], dtype=dtype, requires_grad=True)
        f["model"].visititems(visit)
        tokens = torch.tensor(f["inputs"][()].astype(np.int64))
        targets = torch.tensor(f["targets"][()].astype(np.int64))
    return cfg, params, tokens, targets


def decays(name, cfg):
    if cfg["no_decay_norms"] and (name.endswith("layernorm.weight") or name == "model.norm.weight"):
        return False
    if cfg["no_decay_embeddings"] and name == "model.embed_tokens.weight":
        return False
    return True


def golden(args):
    dtype = getattr(torch, args.dtype)
    cfg, params, tokens, targets = read_input(args.input, dtype)
    def model_loss():
        if cfg["memory_tokens"] > 0:
            return rmt_loss(params, tokens, targets, cfg, dtype)
        logits = forward(params, tokens, cfg, dtype)
        return loss_fn(logits, targets), logits

    loss, logits = model_loss()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    grad_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()

    for p in params.values():
        p.grad = None
    names = sorted(params)
    groups = [{"params": [params[n] for n in names if decays(n, cfg)], "weight_decay": cfg["weight_decay"]},
              {"params": [params[n] for n in names if not decays(n, cfg)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg["lr"],
                            betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    losses = []
    for _ in range(cfg["steps"]):
        opt.zero_grad()
        l = model_loss()[0]
        l.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["grad_clip"])
        opt.step()
        losses.append(l.item())

    with h5py.File(args.output, "w") as f:
        f["loss"] = loss.item()
        f["logits"] = logits.detach().float().numpy()
        f["grad_norm"] = grad_norm
        f["adamw_losses"] = np.array(losses, dtype=np.float64)
        for n in names:
            f[f"grad/{n}"] = grads[n].numpy()
            f[f"final/{n}"] = params[n].detach().numpy()


# ---- bench ------------------------------------------------------------------------------

def random_params(cfg, dtype, std=0.02):
    d, f, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    qd, kvd = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (qd, d), p + "self_attn.k_proj.weight": (kvd, d),
                       p + "self_attn.v_proj.weight": (kvd, d), p + "self_attn.o_proj.weight": (d, qd),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f)})
    params = {}
    for n, s in shapes.items():
        t = torch.ones(s, dtype=dtype) if len(s) == 1 else torch.randn(s, dtype=dtype) * std
        params[n] = t.requires_grad_(True)
    return params


def bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = {"vocab_size": args.vocab, "hidden_size": args.hidden, "intermediate_size": args.intermediate,
           "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
           "num_key_value_heads": args.kv_heads, "head_dim": args.hidden // args.heads,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": 0, "rope_theta": 10000.0, "position": "rope"}
    params = random_params(cfg, torch.float32)
    opt = torch.optim.AdamW(list(params.values()), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1))

    def step():
        opt.zero_grad(set_to_none=True)
        l = loss_fn(forward(params, tokens[:, :-1], cfg, torch.float32), tokens[:, 1:])
        l.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        return l.item()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    print(json.dumps({"impl": "pytorch", "torch_version": torch.__version__, "threads": args.threads,
                      "seq_len": args.seq_len, "batch": args.batch,
                      "tokens_per_s": args.batch * args.seq_len * args.steps / dt,
                      "step_ms": dt / args.steps * 1000.0,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


# ---- selftest -----------------------------------------------------------------------------

def selftest(_args):
    """Autograd of this script's forward against finite differences, float64."""
    torch.manual_seed(1)
    for position in ["rope", "alibi", "none"]:
        cfg = {"vocab_size": 13, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4, "rms_norm_eps": 1e-5,
               "tie_word_embeddings": 0, "rope_theta": 10000.0, "position": position}
        params = random_params(cfg, torch.float64, std=0.3)
        tokens = torch.randint(0, 13, (2, 7))
        targets = torch.randint(0, 13, (2, 7))
        loss = loss_fn(forward(params, tokens, cfg, torch.float64), targets)
        assert abs(loss.item() - math.log(13)) < 1.0, loss.item()
        loss.backward()
        for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
                     "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"]:
            p = params[name]
            for idx in [0, p.numel() // 2, p.numel() - 1]:
                with torch.no_grad():
                    flat = p.view(-1)
                    x0 = flat[idx].item()
                    flat[idx] = x0 + 1e-6
                    lp = loss_fn(forward(params, tokens, cfg, torch.float64), targets).item()
                    flat[idx] = x0 - 1e-6
                    lm = loss_fn(forward(params, tokens, cfg, torch.float64), targets).item()
                    flat[idx] = x0
                fd = (lp - lm) / 2e-6
                g = p.grad.view(-1)[idx].item()
                if abs(fd - g) > 1e-6 * max(1.0, abs(g)) + 1e-8:
                    print(f"selftest FAILED: {position} {name}[{idx}] autograd {g} vs fd {fd}")
                    return 1
    print("selftest passed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("golden")
    g.add_argument("input")
    g.add_argument("output")
    g.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    b = sub.add_parser("bench")
    b.add_argument("--seq-len", type=int, required=True)
    b.add_argument("--steps", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--hidden", type=int, default=256)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--heads", type=int, default=4)
    b.add_argument("--kv-heads", type=int, default=4)
    b.add_argument("--intermediate", type=int, default=704)
    b.add_argument("--vocab", type=int, default=256)
    b.add_argument("--batch", type=int, default=1)
    sub.add_parser("selftest")
    args = ap.parse_args()
    if args.cmd == "golden":
        golden(args)
    elif args.cmd == "bench":
        bench(args)
    else:
        sys.exit(selftest(args))


if __name__ == "__main__":
    main()
