#!/usr/bin/env python3
"""Independent float64 reference for the RoPE scaling family (SPEC §4.2).

Written from the published formulas as in HF transformers'
modeling_rope_utils (_compute_default_rope_parameters,
_compute_linear_scaling_rope_parameters, _compute_dynamic_ntk_parameters,
_compute_yarn_parameters, _compute_llama3_parameters,
_compute_longrope_parameters), in numpy float64 instead of torch float32,
with s = rope_scaling.factor everywhere (SPEC), and the static "ntk" type
of SPEC §4.2 (b' = b * s^(D/(D-2))), which HF does not have.

Usage: rope_scaling_reference.py [CASES.json | -]   (default: stdin)
Input: a JSON list of cases
  {"id": 0, "head_dim": 64, "rope_theta": 10000.0, "seq_len": 4096,
   "rope_scaling": null | {"rope_type": "yarn", "factor": 4,
                           "original_max_position_embeddings": 2048, ...}}
(rope_scaling keys as HF; original_max_position_embeddings is required.)
Output: a JSON list, one case per line:
  {"id": 0, "attention_factor": 1.0, "inv_freq": [...]}
Floats are printed with repr, so they round-trip exactly.
"""
import json
import math
import sys

import numpy as np


def default_inv_freq(base, dim):
    return 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim))


def compute_default(case):
    return default_inv_freq(case["rope_theta"], case["head_dim"]), 1.0


def compute_linear(case):
    inv_freq, attention_factor = compute_default(case)
    return inv_freq / case["rope_scaling"]["factor"], attention_factor


def compute_ntk(case):
    dim, rs = case["head_dim"], case["rope_scaling"]
    base = case["rope_theta"] * rs["factor"] ** (dim / (dim - 2))
    return default_inv_freq(base, dim), 1.0


def compute_dynamic(case):
    dim, rs = case["head_dim"], case["rope_scaling"]
    base, factor = case["rope_theta"], rs["factor"]
    max_pos = rs["original_max_position_embeddings"]
    seq_len = case["seq_len"]
    # HF: seq_len = max(seq_len, max_position_embeddings); at seq_len == max_pos
    # the multiplier is exactly 1.
    seq_len = seq_len if seq_len > max_pos else max_pos
    base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return default_inv_freq(base, dim), 1.0


def get_mscale(scale, mscale=1):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def compute_yarn(case):
    dim, rs = case["head_dim"], case["rope_scaling"]
    base, factor = case["rope_theta"], rs["factor"]
    original_max_position_embeddings = rs["original_max_position_embeddings"]
    attention_factor = rs.get("attention_factor")
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1

    def find_correction_dim(num_rotations):
        return (dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi))) / (
            2 * math.log(base))

    def find_correction_range(low_rot, high_rot):
        low = math.floor(find_correction_dim(low_rot))
        high = math.ceil(find_correction_dim(high_rot))
        return max(low, 0), min(high, dim - 1)

    def linear_ramp_factor(lo, hi, n):
        if lo == hi:
            hi += 0.001  # prevent singularity
        return np.clip((np.arange(n, dtype=np.float64) - lo) / (hi - lo), 0, 1)

    pos_freqs = base ** (np.arange(0, dim, 2).astype(np.float64) / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = inv_freq_extrapolation / factor
    low, high = find_correction_range(beta_fast, beta_slow)
    extrapolation_factor = 1 - linear_ramp_factor(low, high, dim // 2)
    inv_freq = (inv_freq_interpolation * (1 - extrapolation_factor)
                + inv_freq_extrapolation * extrapolation_factor)
    return inv_freq, attention_factor


def compute_llama3(case):
    rs = case["rope_scaling"]
    inv_freq, attention_factor = compute_default(case)
    factor = rs["factor"]
    low_freq_factor = rs.get("low_freq_factor", 1.0)
    high_freq_factor = rs.get("high_freq_factor", 4.0)
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama), attention_factor


def compute_longrope(case):
    dim, rs = case["head_dim"], case["rope_scaling"]
    base, factor = case["rope_theta"], rs["factor"]
    original_max_position_embeddings = rs["original_max_position_embeddings"]
    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        if factor <= 1.0:
            attention_factor = 1.0
        else:
            attention_factor = math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))
    seq_len = case["seq_len"]
    if seq_len and seq_len > original_max_position_embeddings:
        ext_factors = np.asarray(rs["long_factor"], dtype=np.float64)
    else:
        ext_factors = np.asarray(rs["short_factor"], dtype=np.float64)
    inv_freq_shape = np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim
    return 1.0 / (ext_factors * base ** inv_freq_shape), attention_factor


COMPUTE = {
    "linear": compute_linear,
    "ntk": compute_ntk,
    "dynamic": compute_dynamic,
    "yarn": compute_yarn,
    "llama3": compute_llama3,
    "longrope": compute_longrope,
}


def compute(case):
    rs = case.get("rope_scaling")
    inv_freq, attention_factor = (compute_default(case) if rs is None
                                  else COMPUTE[rs["rope_type"]](case))
    return {"id": case["id"], "attention_factor": float(attention_factor),
            "inv_freq": [float(x) for x in inv_freq]}


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "-"
    text = sys.stdin.read() if src == "-" else open(src).read()
    rows = [json.dumps(compute(case)) for case in json.loads(text)]
    print("[\n" + ",\n".join(rows) + "\n]")


if __name__ == "__main__":
    main()
