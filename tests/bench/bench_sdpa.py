#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention (flash backend) on the shapes of
tests/bench/bench_cuda_attention.cpp, for comparison on the same GPU.

  python3 tests/bench/bench_sdpa.py [--ours bench.json] [--seq-lens 1024,4096,16384,32768]
                              [--hd 128] [--heads 16] [--kv-heads G] [--tokens 16384] [--reps 10]

Prints JSON with PyTorch's forward and backward medians (backward = forward+
backward minus forward, as the same FLOP convention: 4BHT^2hd forward, 2.5x
backward, halved when causal). With --ours (the JSON bench_cuda_attention
printed), also a side-by-side table on stderr.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    ap.add_argument("--seq-lens", default="1024,4096,16384,32768")
    ap.add_argument("--hd", type=int, default=128)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=0, help="G < heads: grouped-query attention")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(json.dumps({"skipped": f"PyTorch with sdpa_kernel not available: {e}"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0

    def median_ms(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(a.reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        ts.sort()
        return ts[len(ts) // 2]

    F = torch.nn.functional
    G = a.kv_heads or a.heads
    if a.heads % G:
        sys.exit(f"--kv-heads {G} must divide --heads {a.heads}")
    gqa_mode = None
    res = []
    for T in [int(x) for x in a.seq_lens.split(",")]:
        B = max(1, a.tokens // T)
        g = torch.Generator(device="cuda").manual_seed(T)
        mk = lambda h: (torch.rand(B, h, T, a.hd, device="cuda", generator=g) * 4 - 2).to(
            torch.bfloat16).requires_grad_(True)
        q, k, v = mk(a.heads), mk(G), mk(G)
        do = mk(a.heads).detach()

        def sdpa(causal):
            if G == a.heads:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            if gqa_mode == "enable_gqa":
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            rep = a.heads // G  # the copies are part of the timed work, as in a model
            return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, dim=1),
                                                  v.repeat_interleave(rep, dim=1), is_causal=causal)

        for causal in (False, True):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                if G != a.heads and gqa_mode is None:
                    try:  # the flash backend with enable_gqa, else repeated kv heads
                        gqa_mode = "enable_gqa"
                        sdpa(causal)
                    except RuntimeError:
                        gqa_mode = "kv heads repeated"

                def fwd():
                    with torch.no_grad():
                        sdpa(causal)

                def fwd_bwd():
                    sdpa(causal).backward(do)

                tf = median_ms(fwd)
                tfb = median_ms(fwd_bwd)
            tb = tfb - tf
            flops = 4.0 * B * a.heads * T * T * a.hd * (0.5 if causal else 1.0)
            res.append({"T": T, "B": B, "causal": causal, "fwd_ms": round(tf, 3),
                        "fwd_tflops": round(flops / tf / 1e9, 1), "bwd_ms": round(tb, 3),
                        "bwd_tflops": round(2.5 * flops / tb / 1e9, 1)})
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
           "backend": "flash (sdpa_kernel FLASH_ATTENTION)", "hd": a.hd, "heads": a.heads,
           "kv_heads": G, "gqa": gqa_mode, "results": res}
    print(json.dumps(out, indent=2))
    if a.ours:
        ours = json.load(open(a.ours))
        peak = ours.get("matmul_bf16_tflops", 0)
        key = {(r["T"], r["causal"]): r for r in ours.get("results", [])}
        print(f"{'T':>6} {'causal':>6} | {'ours fwd':>9} {'sdpa fwd':>9} {'% mm':>5} | "
              f"{'ours bwd':>9} {'sdpa bwd':>9} {'% mm':>5}   (TFLOP/s; % of measured "
              f"bf16 matmul {peak})", file=sys.stderr)
        for r in res:
            o = key.get((r["T"], r["causal"]))
            if not o:
                continue
            print(f"{r['T']:>6} {str(r['causal']):>6} | {o['fwd_tflops']:>9} {r['fwd_tflops']:>9} "
                  f"{100 * o['fwd_frac_of_matmul']:>5.1f} | {o['bwd_tflops']:>9} "
                  f"{r['bwd_tflops']:>9} {100 * o['bwd_frac_of_matmul']:>5.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
