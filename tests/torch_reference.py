#!/usr/bin/python3
"""Independent PyTorch reference for ringtrain's model (SPEC §3, §4.1, §4.3).

Written from the SPEC's math in plain torch ops; imports nothing of ringtrain.
Run with Debian's /usr/bin/python3 (python3-torch, python3-h5py).

  torch_reference.py golden IN.h5 OUT.h5 [--dtype float64|float32]
      IN.h5: root attributes vocab_size, hidden_size, intermediate_size,
        num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim
        (0 or absent: hidden/heads), rms_norm_eps, tie_word_embeddings (0/1),
        rope_theta, position (string rope|alibi|none), lr, beta1, beta2, eps,
        weight_decay, grad_clip (0 = off), steps, no_decay_norms,
        no_decay_embeddings (0/1); /model/<HF name> weights (any float type,
        lm_head.weight absent when tied); /inputs, /targets int [B,T]
        (target -1 is ignored by the loss).
        Optional memory_tokens, segment_length, bptt_segments (> 0 tokens:
        recurrent memory, SPEC §5; /logits then holds the last segment's).
      OUT.h5: /loss (f64 scalar), /logits (f32 [B,T,V]), /grad/<name> (the
        working dtype), /grad_norm (f64 scalar: global L2 norm of the first
        gradient, before clipping), /adamw_losses (f64 [steps]: the loss before
        each torch.optim.AdamW step on the same batch, constant lr,
        clip_grad_norm_ when grad_clip > 0), /final/<name> (working dtype).
  torch_reference.py bench --seq-len T [--steps N --warmup W --threads K --sdpa ...]
      times the same model (fp32, RoPE, std 0.02, random tokens) trained with
      torch.optim.AdamW and clip_grad_norm_(1.0) in eager mode; prints one JSON line.
      On a machine shared with other busy processes, libgomp's default spinning
      makes torch up to ~30x slower: run with OMP_WAIT_POLICY=PASSIVE there
      (the JSON records the policy in use).
  torch_reference.py selftest
      checks this script: ALiBi slopes, RoPE relativity, golden's loss at init
      (~ln V), its gradients against finite differences (float64, 1e-6
      relative) and its AdamW against AdamW written out; exit 1 on failure.
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
    i = torch.arange(T)
    bias = None
    if cfg["position"] == "alibi":
        # bias(i,j) = -slope_head * (i - j), added after the 1/sqrt(h) scale: [H,T,T]
        dist = (i[:, None] - i[None, :]).to(torch.float64)
        bias = (-alibi_slopes(H)[:, None, None] * dist[None]).to(dtype)
    causal = i[None, :] > i[:, None]  # [T,T], True where j > i (masked)
    if cfg.get("sdpa"):
        sdpa = torch.nn.functional.scaled_dot_product_attention
        if bias is None:
            o = sdpa(q, k, v, is_causal=True)
        else:
            o = sdpa(q, k, v, attn_mask=bias.masked_fill(causal, float("-inf")))
        return o.transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(h)  # [B,H,T,T]
    if bias is not None:
        s = s + bias
    s = s.masked_fill(causal, float("-inf"))
    return (torch.softmax(s, dim=-1) @ v).transpose(1, 2)  # [B,T,H,h]


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
        cfg = {k: int(f.attrs[k]) for k in CONFIG_INT if k != "head_dim"}
        cfg["head_dim"] = int(f.attrs.get("head_dim", 0))
        cfg.update({k: float(f.attrs[k]) for k in CONFIG_FLOAT})
        if cfg["head_dim"] <= 0:  # SPEC §2: head_dim null -> hidden_size / heads
            cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
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


def compute_loss(params, tokens, targets, cfg, dtype):
    """-> (loss, logits [B,T,V]; with memory, the last segment's)"""
    if cfg.get("memory_tokens", 0) > 0:
        return rmt_loss(params, tokens, targets, cfg, dtype)
    logits = forward(params, tokens, cfg, dtype)
    return loss_fn(logits, targets), logits


def golden(args):
    dtype = getattr(torch, args.dtype)
    cfg, params, tokens, targets = read_input(args.input, dtype)
    model_loss = lambda: compute_loss(params, tokens, targets, cfg, dtype)

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

def random_params(cfg, dtype, std=0.02, memory=0):
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
    if memory:
        shapes["model.memory.embeddings"] = (memory, d)
    if cfg["tie_word_embeddings"]:
        del shapes["lm_head.weight"]
    params = {}
    for n, s in shapes.items():
        t = torch.ones(s, dtype=dtype) if len(s) == 1 else torch.randn(s, dtype=dtype) * std
        params[n] = t.requires_grad_(True)
    return params


def bench(args):
    if args.sdpa and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        print(f"error: --sdpa needs torch.nn.functional.scaled_dot_product_attention (torch >= 2.0); "
              f"this torch is {torch.__version__}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = {"vocab_size": args.vocab, "hidden_size": args.hidden, "intermediate_size": args.intermediate,
           "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
           "num_key_value_heads": args.kv_heads, "head_dim": args.hidden // args.heads,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": 0, "rope_theta": 10000.0, "position": "rope",
           "sdpa": args.sdpa}
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
                      "attention": "sdpa" if args.sdpa else "eager",
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                      "tokens_per_s": args.batch * args.seq_len * args.steps / dt,
                      "step_ms": dt / args.steps * 1000.0,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


# ---- selftest -----------------------------------------------------------------------------

def write_input(path, cfg, params, tokens, targets):
    """Writes an IN.h5 in the format golden reads (the C++ parity test writes the same)."""
    with h5py.File(path, "w") as f:
        for k in CONFIG_INT + ["memory_tokens", "segment_length", "bptt_segments"]:
            if k in cfg:
                f.attrs[k] = np.int64(cfg[k])
        for k in CONFIG_FLOAT:
            f.attrs[k] = np.float64(cfg[k])
        f.attrs["position"] = cfg["position"]
        for n, p in params.items():
            if n == "lm_head.weight" and cfg["tie_word_embeddings"]:
                continue
            f[f"model/{n}"] = p.detach().float().numpy()
        f["inputs"] = tokens.numpy().astype(np.int32)
        f["targets"] = targets.numpy().astype(np.int32)


def tiny_config(position, heads, kv_heads, tied, **extra):
    cfg = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": 8,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": int(tied), "rope_theta": 10000.0,
           "position": position, "lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
           "weight_decay": 0.1, "grad_clip": 0.5, "steps": 3, "no_decay_norms": 1,
           "no_decay_embeddings": 0}
    cfg.update(extra)
    return cfg


def tiny_batch(cfg, B=2, T=17):
    tokens = torch.randint(0, cfg["vocab_size"], (B, T))
    targets = torch.randint(0, cfg["vocab_size"], (B, T))
    targets[0, 3] = -1  # an ignored target
    return tokens, targets


def run_golden(tmp, tag, cfg, params, tokens, targets):
    src, dst = os.path.join(tmp, tag + "_in.h5"), os.path.join(tmp, tag + "_out.h5")
    write_input(src, cfg, params, tokens, targets)
    golden(argparse.Namespace(input=src, output=dst, dtype="float64"))
    with h5py.File(dst, "r") as f:
        out = {n: torch.tensor(np.asarray(f[n][()])) for n in ["loss", "logits", "grad_norm", "adamw_losses"]}
        out["grad"] = {n: torch.tensor(f["grad"][n][()]) for n in f["grad"]}
        out["final"] = {n: torch.tensor(f["final"][n][()]) for n in f["final"]}
    return src, out


def manual_adamw(cfg, params, tokens, targets):
    """AdamW written out (torch.optim.AdamW semantics, clip_grad_norm_ with its +1e-6):
    returns the losses before each step and the final weights."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    lr, b1, b2, eps, wd = cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["eps"], cfg["weight_decay"]
    losses = []
    for t in range(1, cfg["steps"] + 1):
        for p in params.values():
            p.grad = None
        loss = compute_loss(params, tokens, targets, cfg, torch.float64)[0]
        loss.backward()
        losses.append(loss.item())
        g = {n: p.grad for n, p in params.items()}
        norm = torch.sqrt(sum((x ** 2).sum() for x in g.values()))
        if cfg["grad_clip"] > 0:
            coef = min(1.0, cfg["grad_clip"] / (norm.item() + 1e-6))
            g = {n: x * coef for n, x in g.items()}
        with torch.no_grad():
            for n, p in params.items():
                if decays(n, cfg):
                    p.mul_(1 - lr * wd)
                m[n] = b1 * m[n] + (1 - b1) * g[n]
                v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
                denom = (v[n] / (1 - b2 ** t)).sqrt() + eps
                p.sub_(lr * (m[n] / (1 - b1 ** t)) / denom)
    return losses, {n: p.detach() for n, p in params.items()}


def finite_difference(params, name, idx, loss_at, step=1e-5):
    """4-point central difference of the loss in one weight entry (error O(step^4))."""
    flat = params[name].data.view(-1)
    x0 = flat[idx].item()
    vals = []
    for k in (2, 1, -1, -2):
        flat[idx] = x0 + k * step
        vals.append(loss_at())
    flat[idx] = x0
    return (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * step)


def selftest(_args):
    """Checks this script: ALiBi slopes, RoPE relativity, the golden mode's loss at init,
    its gradients against finite differences, and its AdamW against AdamW written out."""
    torch.manual_seed(1)
    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)
            print("FAILED:", what)

    # ALiBi slopes (SPEC §4.3), power-of-two and not
    for n, want in [(8, [2.0 ** -(k + 1) for k in range(8)]),
                    (6, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
                    (12, [2.0 ** -(k + 1) for k in range(8)] + [2.0 ** -(k + 0.5) for k in range(4)])]:
        check(torch.allclose(alibi_slopes(n), torch.tensor(want, dtype=torch.float64)), f"alibi slopes n={n}")

    # RoPE: the rotated q.k depends only on i - j
    cos, sin = rope_cos_sin(40, 8, 10000.0, torch.float64)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    rot = lambda x, p: x * cos[p] + rotate_half(x) * sin[p]
    check(abs(rot(q, 30) @ rot(k, 27) - rot(q, 5) @ rot(k, 2)) < 1e-12, "rope relative position")

    cases = [("rope_gqa", tiny_config("rope", 4, 2, False)),
             ("rope_mqa_tied", tiny_config("rope", 4, 1, True, no_decay_embeddings=1)),
             ("alibi_6heads", tiny_config("alibi", 6, 3, False, no_decay_norms=0)),
             ("none_tied", tiny_config("none", 4, 4, True, grad_clip=0.0)),
             ("rmt_rope", tiny_config("rope", 4, 2, False, memory_tokens=2, segment_length=6,
                                      bptt_segments=-1))]
    with tempfile.TemporaryDirectory() as tmp:
        for tag, cfg in cases:
            T = 18 if cfg.get("memory_tokens") else 17
            if cfg.get("memory_tokens"):
                cfg = dict(cfg, steps=2)
            rp = lambda std: random_params(cfg, torch.float64, std=std, memory=cfg.get("memory_tokens", 0))
            tokens, targets = tiny_batch(cfg, T=T)

            # (a) at init (std 0.02) the loss is finite and about ln V
            _, out = run_golden(tmp, tag + "_init", cfg, rp(0.02), tokens, targets)
            loss = out["loss"].item()
            check(math.isfinite(loss) and abs(loss - math.log(cfg["vocab_size"])) < 0.05,
                  f"{tag}: loss at init {loss} vs ln V {math.log(cfg['vocab_size'])}")

            # (b) golden's gradients against finite differences (std 0.3: sizeable gradients)
            params = rp(0.3)
            with torch.no_grad():
                for n, p in params.items():
                    if p.dim() == 1:
                        p.add_(0.3 * torch.randn_like(p))  # norms away from 1
            src, out = run_golden(tmp, tag, cfg, params, tokens, targets)
            cfg_in, p64, tok, tgt = read_input(src, torch.float64)
            check(set(out["grad"]) == set(p64), f"{tag}: gradient names {sorted(out['grad'])}")
            loss_at = lambda: compute_loss(p64, tok, tgt, cfg_in, torch.float64)[0].item()
            worst = 0.0
            with torch.no_grad():
                for n in sorted(p64):
                    g = out["grad"][n].reshape(-1)
                    for idx in {int(g.abs().argmax()), int(torch.randint(0, g.numel(), ()))}:
                        fd = finite_difference(p64, n, idx, loss_at)
                        err = abs(fd - g[idx].item())
                        if abs(g[idx].item()) > 1e-4:
                            worst = max(worst, err / abs(g[idx].item()))
                        check(err <= 1e-6 * abs(g[idx].item()) + 1e-10,
                              f"{tag}: {n}[{idx}] autograd {g[idx].item():.12e} vs fd {fd:.12e}")
            norm = math.sqrt(sum((x ** 2).sum().item() for x in out["grad"].values()))
            check(abs(norm - out["grad_norm"].item()) <= 1e-12 * norm, f"{tag}: grad_norm")
            check(abs(out["adamw_losses"][0].item() - out["loss"].item()) <= 1e-12 * loss,
                  f"{tag}: first AdamW loss is the loss")

            # (c) golden's AdamW against AdamW written out
            losses, final = manual_adamw(cfg_in, p64, tok, tgt)
            check(torch.allclose(out["adamw_losses"], torch.tensor(losses, dtype=torch.float64),
                                 rtol=1e-12, atol=0), f"{tag}: AdamW losses")
            for n in sorted(final):
                check(torch.allclose(out["final"][n], final[n], rtol=1e-10, atol=1e-12),
                      f"{tag}: weights after AdamW of {n}")
            print(f"selftest {tag}: loss {out['loss'].item():.6f}, fd vs autograd worst rel err {worst:.1e}, "
                  f"AdamW losses {[round(x, 6) for x in out['adamw_losses'].tolist()]}")
    if failures:
        print(f"selftest FAILED ({len(failures)} checks)")
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
    b.add_argument("--sdpa", action="store_true",
                   help="use torch.nn.functional.scaled_dot_product_attention (torch >= 2.0)")
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
