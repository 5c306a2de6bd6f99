#!/usr/bin/env python3
"""The PyTorch peer of `ringtrain bench`: one LLaMA training step (forward,
backward, AdamW) in plain PyTorch with the shapes of a ringtrain config, timed
the same way and reported with the same FLOP convention.

  python3 tests/bench/bench_torch_train.py [CONFIG.yaml] [--seq-len T]
      [--hidden 2048 --layers 22 --heads 32 --kv-heads 4 --intermediate 5632 --vocab 32000]
      [--steps 5] [--warmup 2] [--compile] [--checkpointing] [--device cuda|cpu]
      [--find-max-t [--max-t-limit 1048576]] [--mem-limit-gib G]

Shapes come from the config's model section and train.seq_len /
train.activation_checkpointing (a ringtrain YAML), then from the flags, which
win; without either, TinyLlama's (2048, 22, 32, 4, 5632, 32000, T 4096).
Micro batch 1, random tokens, fp32 weights (the master copy) with bf16
autocast, RMSNorm, RoPE (HF rotate_half), GQA, SwiGLU, untied lm_head unless
model.tie_word_embeddings, AdamW (fused where this torch has it, lr 1e-4),
attention by scaled_dot_product_attention restricted to the flash backend
(torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)) where this torch
has it, else a plain (math) causal softmax attention. --checkpointing
recomputes each decoder layer in the backward (torch.utils.checkpoint).

Prints one JSON line: tokens_per_s, step_ms (mean of the timed steps,
synchronised), mfu (SPEC §11 FLOPs per token = 6 * non-embedding params +
6 * layers * hidden * T, i.e. causal attention counted half, over the GPU's
dense bf16 peak from its name: H100 SXM/H200 989, H100 PCIe 756, H100/H200 NVL
835, A100 312 TFLOP/s; null on the CPU or an unknown GPU), peak_mem_bytes
(torch.cuda.max_memory_allocated on the GPU, peak RSS on the CPU), T, mode
(eager|compile, +ckpt, attention and optimizer used), final_loss, and the
shapes. --find-max-t doubles T from --seq-len until a step runs out of memory
and prints {"max_t": the longest T that trained, ...} (each T one step after
--warmup steps, at most 1). --mem-limit-gib caps what PyTorch's allocator may
take (torch.cuda.set_per_process_memory_fraction), e.g. 79.6 to ask whether a
run fits an 80 GB H100 (81 559 MiB) on a larger GPU.
"""
import argparse
import json
import math
import resource
import sys
import time

TINYLLAMA = dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000,
                 seq_len=4096)


def peak_bf16_flops(name):
    """Dense bf16 tensor-core peak FLOP/s from a GPU name; 0 when unknown
    (the same table as trainer/train/device.cpp)."""
    if any(s in name for s in ("H100", "H200", "GH200")):
        if "PCIe" in name:
            return 756e12
        if "NVL" in name:
            return 835e12
        return 989e12
    if "A100" in name:
        return 312e12
    return 0.0


def load_shape(args):
    shape = dict(TINYLLAMA, head_dim=None, tied=False, rope_theta=10000.0, eps=1e-5,
                 checkpointing=False)
    if args.config:
        import yaml
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        m = cfg.get("model") or {}
        t = cfg.get("train") or {}
        keys = dict(hidden="hidden_size", layers="num_hidden_layers", heads="num_attention_heads",
                    kv_heads="num_key_value_heads", intermediate="intermediate_size",
                    vocab="vocab_size", head_dim="head_dim", tied="tie_word_embeddings",
                    rope_theta="rope_theta", eps="rms_norm_eps")
        for k, yk in keys.items():
            if m.get(yk) is not None:
                shape[k] = m[yk]
        if m.get("num_key_value_heads") is None and m.get("num_attention_heads") is not None:
            shape["kv_heads"] = m["num_attention_heads"]
        if t.get("seq_len") is not None:
            shape["seq_len"] = t["seq_len"]
        ac = t.get("activation_checkpointing")
        if ac is not None:
            # false | true | full | selective: this script has whole-layer
            # checkpointing only, so selective (ringtrain keeps the attention
            # outputs) runs as full here, and says so
            if ac not in (False, True, "full", "selective"):
                sys.exit(f"error: train.activation_checkpointing: expected false, true, full or "
                         f"selective, got {ac!r}")
            shape["checkpointing"] = ac is not False
            if ac == "selective":
                print("note: activation_checkpointing selective runs as whole-layer "
                      "checkpointing in this script", file=sys.stderr)
    for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "seq_len",
              "head_dim"):
        v = getattr(args, k)
        if v is not None:
            shape[k] = v
    if args.checkpointing:
        shape["checkpointing"] = True
    if shape["head_dim"] is None:
        if shape["hidden"] % shape["heads"]:
            sys.exit(f"error: hidden {shape['hidden']} is not a multiple of heads "
                     f"{shape['heads']}; give --head-dim")
        shape["head_dim"] = shape["hidden"] // shape["heads"]
    if shape["heads"] % shape["kv_heads"]:
        sys.exit(f"error: heads {shape['heads']} is not a multiple of kv heads {shape['kv_heads']}")
    return shape


def build(torch, shape, device, attention):
    nn = torch.nn
    F = torch.nn.functional
    d, H, G, hd = shape["hidden"], shape["heads"], shape["kv_heads"], shape["head_dim"]
    ckpt = shape["checkpointing"]

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + shape["eps"])
            return (y * self.weight).to(x.dtype)

    def rotate_half(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat((-x2, x1), dim=-1)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm()
            self.q_proj = nn.Linear(d, H * hd, bias=False)
            self.k_proj = nn.Linear(d, G * hd, bias=False)
            self.v_proj = nn.Linear(d, G * hd, bias=False)
            self.o_proj = nn.Linear(H * hd, d, bias=False)
            self.post_attention_layernorm = RMSNorm()
            self.gate_proj = nn.Linear(d, shape["intermediate"], bias=False)
            self.up_proj = nn.Linear(d, shape["intermediate"], bias=False)
            self.down_proj = nn.Linear(shape["intermediate"], d, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            h = self.input_layernorm(x)
            q = self.q_proj(h).view(B, T, H, hd).transpose(1, 2)
            k = self.k_proj(h).view(B, T, G, hd).transpose(1, 2)
            v = self.v_proj(h).view(B, T, G, hd).transpose(1, 2)
            q = (q * cos + rotate_half(q) * sin).to(v.dtype)
            k = (k * cos + rotate_half(k) * sin).to(v.dtype)
            a = attention(q, k, v).transpose(1, 2).reshape(B, T, H * hd)
            x = x + self.o_proj(a)
            h = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(shape["vocab"], d)
            self.layers = nn.ModuleList(Layer() for _ in range(shape["layers"]))
            self.norm = RMSNorm()
            self.lm_head = nn.Linear(d, shape["vocab"], bias=False)
            if shape["tied"]:
                self.lm_head.weight = self.embed_tokens.weight
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=0.02)

        def forward(self, tokens, targets, cos, sin):
            x = self.embed_tokens(tokens)
            for layer in self.layers:
                if ckpt:
                    x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
                else:
                    x = layer(x, cos, sin)
            logits = self.lm_head(self.norm(x))
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))

    return Llama().to(device)


def non_embedding_params(shape):
    """Parameters other than model.embed_tokens.weight (model/llama.cpp's count)."""
    d, H, G, hd, I = (shape["hidden"], shape["heads"], shape["kv_heads"], shape["head_dim"],
                      shape["intermediate"])
    per_layer = 2 * d + d * H * hd * 2 + d * G * hd * 2 + 3 * d * I
    n = shape["layers"] * per_layer + d
    if not shape["tied"]:
        n += shape["vocab"] * d
    return n


def attention_fn(torch, device, shape, probe):
    """(fn, name): SDPA restricted to flash where available, else math."""
    F = torch.nn.functional
    H, G = shape["heads"], shape["kv_heads"]
    rep = H // G

    def math_attention(q, k, v):
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        T = q.shape[-2]
        s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
        return (torch.softmax(s, dim=-1) @ v.float()).to(v.dtype)

    if not hasattr(F, "scaled_dot_product_attention"):
        return math_attention, "math (torch without scaled_dot_product_attention)"
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        sdpa_kernel = None
    if device != "cuda" or sdpa_kernel is None:
        def sdpa_any(q, k, v):
            if rep > 1:
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return sdpa_any, "sdpa (any backend)"

    def flash(gqa):
        def fn(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                if rep > 1:
                    k = k.repeat_interleave(rep, dim=1)
                    v = v.repeat_interleave(rep, dim=1)
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return fn

    # flash with native GQA where this torch's flash backend takes it
    for gqa, name in ((True, "sdpa flash (enable_gqa)"), (False, "sdpa flash (kv heads repeated)")):
        if gqa and rep == 1:
            continue
        fn = flash(gqa)
        try:
            q = torch.randn(1, H, 128, shape["head_dim"], device=device, dtype=torch.bfloat16,
                            requires_grad=True)
            k = torch.randn(1, G, 128, shape["head_dim"], device=device, dtype=torch.bfloat16,
                            requires_grad=True)
            v = torch.randn_like(k, requires_grad=True)
            fn(q, k, v).sum().backward()
            return fn, name
        except Exception as e:  # noqa: BLE001 - any refusal means: try the next
            probe.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    return math_attention, "math (flash refused: " + "; ".join(probe) + ")"


def is_oom(torch, e):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e).lower()


def run(torch, args, shape, device, T, steps, warmup):
    """One measurement at sequence length T; returns the result dict."""
    torch.manual_seed(args.seed)
    probe = []
    attention, att_name = attention_fn(torch, device, shape, probe)
    model = build(torch, shape, device, attention)
    fused = False
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1,
                                fused=(device == "cuda"))
        fused = device == "cuda"
    except (TypeError, RuntimeError, ValueError):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    step_model = model
    if args.compile:
        step_model = torch.compile(model)
    hd = shape["head_dim"]
    inv = 1.0 / (shape["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    ang = torch.cat((ang, ang), dim=-1)
    cos = ang.cos().float().to(device)[None, None]
    sin = ang.sin().float().to(device)[None, None]
    g = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, shape["vocab"], (1, T + 1), generator=g).to(device)
    tokens, targets = data[:, :T], data[:, 1:]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = step_model(tokens, targets, cos, sin)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - t0) / steps
    tps = T / step_s
    fpt = 6.0 * non_embedding_params(shape) + 6.0 * shape["layers"] * shape["hidden"] * T
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_bf16_flops(name) if device == "cuda" else 0.0
    if device == "cuda":
        peak_mem = torch.cuda.max_memory_allocated()
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mode = ("compile" if args.compile else "eager") + ("+ckpt" if shape["checkpointing"] else "")
    return {
        "tokens_per_s": tps, "step_ms": step_s * 1e3, "mfu": tps * fpt / peak if peak else None,
        "peak_mem_bytes": int(peak_mem), "T": T, "mode": mode, "attention": att_name,
        "optimizer": "adamw fused" if fused else "adamw", "autocast": "bf16",
        "device": name, "torch": torch.__version__, "flops_per_token": fpt,
        "flops_per_s": tps * fpt, "params": sum(p.numel() for p in model.parameters()),
        "final_loss": float(loss.item()), "steps": steps, "warmup": warmup,
        "hidden": shape["hidden"], "layers": shape["layers"], "heads": shape["heads"],
        "kv_heads": shape["kv_heads"], "head_dim": hd, "intermediate": shape["intermediate"],
        "vocab": shape["vocab"], "micro_batch": 1,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="ringtrain config YAML (model and train sections)")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", dest="kv_heads", type=int)
    ap.add_argument("--head-dim", dest="head_dim", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--seq-len", "-T", dest="seq_len", type=int)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--checkpointing", action="store_true",
                    help="activation checkpointing per decoder layer")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="default: cuda when torch sees one, else cpu")
    ap.add_argument("--find-max-t", action="store_true",
                    help="double T from --seq-len until a step runs out of memory")
    ap.add_argument("--max-t-limit", type=int, default=1 << 20)
    ap.add_argument("--mem-limit-gib", type=float, default=0,
                    help="cap PyTorch's GPU memory at this many GiB (default: no cap)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        sys.exit("error: --steps must be >= 1 and --warmup >= 0")

    import torch
    import torch.utils.checkpoint  # noqa: F401 (a submodule: not imported by torch itself)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device (torch "
                 f"{torch.__version__}); use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mem_limit_gib:
        if device != "cuda":
            sys.exit("error: --mem-limit-gib caps GPU memory: it needs --device cuda")
        total = torch.cuda.get_device_properties(0).total_memory
        if args.mem_limit_gib * 2**30 > total:
            sys.exit(f"error: --mem-limit-gib {args.mem_limit_gib} is more than this GPU's "
                     f"{total / 2**30:.1f} GiB")
        torch.cuda.set_per_process_memory_fraction(args.mem_limit_gib * 2**30 / total)
    shape = load_shape(args)
    if not args.find_max_t:
        print(json.dumps(run(torch, args, shape, device, shape["seq_len"], args.steps,
                             args.warmup)), flush=True)
        return 0
    best, T, tried = None, shape["seq_len"], []
    while T <= args.max_t_limit:
        try:
            r = run(torch, args, shape, device, T, 1, min(args.warmup, 1))
            best = r
            tried.append({"T": T, "ok": True, "step_ms": r["step_ms"],
                          "peak_mem_bytes": r["peak_mem_bytes"]})
            print(json.dumps({"T": T, "ok": True, "step_ms": r["step_ms"],
                              "peak_mem_bytes": r["peak_mem_bytes"]}), file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001
            if not is_oom(torch, e):
                raise
            tried.append({"T": T, "ok": False, "error": str(e).splitlines()[0][:200]})
            break
        finally:
            if device == "cuda":
                import gc
                gc.collect()
                torch.cuda.empty_cache()
        T *= 2
    mode = ("compile" if args.compile else "eager") + ("+ckpt" if shape["checkpointing"] else "")
    print(json.dumps({"max_t": best["T"] if best else 0, "mode": mode,
                      "device": best["device"] if best else device,
                      "peak_mem_bytes": best["peak_mem_bytes"] if best else None,
                      "limit_reached": T > args.max_t_limit,
                      "mem_limit_bytes": int(args.mem_limit_gib * 2**30) or None,
                      "tried": tried}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
