"""ringtrain import / export against the real Hugging Face libraries (SPEC §13).

Run with the Python that has `transformers` and `safetensors` (./setup.sh puts
them in .venv, over Debian's torch):
    .venv/bin/python tests/reference/hf_interop.py RINGTRAIN WORKDIR

Tiny random Llama models built by transformers itself (MHA and GQA, tied and
untied, no scaling, linear, dynamic, llama3 and yarn rope_scaling, single-file and sharded,
fp32, bf16 and fp16 files):
  - `ringtrain import` + `eval` gives the per-token NLL of the transformers
    forward (relative 1e-4; bf16/fp16 weights are compared upcast to fp32,
    which is exact), and `eval` on the HF directory itself gives the same
    numbers bit for bit;
  - greedy `ringtrain generate` gives transformers' greedy tokens (32 new,
    byte-level prompt: vocab 256);
  - import -> export -> import is bit-identical, and the exported tensors equal
    the original files' values bit for bit (fp32 and bf16 sources);
  - the exported directory loads with from_pretrained with no missing or
    unexpected keys, sharded directories with an index.
A model trained by ringtrain for a few steps (GQA; plain RoPE, llama3, yarn
and ntk scaling) and exported loads with from_pretrained with no
missing/unexpected keys, has exactly the logits of the checkpoint's weights
(fp32), and the per-token NLL of ringtrain's eval (relative 1e-4), which
checks that config.json's rope_scaling is read as ringtrain computes it.
Exits non-zero on the first failure, naming it.
"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

BIN, WORK = sys.argv[1], sys.argv[2]
os.makedirs(WORK, exist_ok=True)
ENV = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
TEXT = (b"ringtrain reads Hugging Face Llama checkpoints: config.json, safetensors, "
        b"and writes them back. The quick brown fox jumps over the lazy dog 0123456789. "
        b"Long context needs rope scaling; yarn and llama3 rescale the frequencies.\n") * 2
SEQ = 96
PROMPT = "The quick brown fox"
torch.manual_seed(0)


def run(*args, expect=0):
    p = subprocess.run([BIN, *args], env=ENV, capture_output=True)
    if p.returncode != expect:
        sys.exit(f"FAIL: ringtrain {' '.join(args)} exited {p.returncode} (expected {expect})\n"
                 f"{p.stdout.decode(errors='replace')}\n{p.stderr.decode(errors='replace')}")
    return p


def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)


def ringtrain_nll(target, tag):
    out = os.path.join(WORK, f"eval-{tag}.json")
    run("eval", target, "--data", os.path.join(WORK, "text.txt"), "--seq-len", str(SEQ),
        "--max-sequences", "1", "--bucket", "1", "--json", out, "--no-plots")
    with open(out) as f:
        return np.array(json.load(f)["loss_by_position"]["mean_nll"], dtype=np.float64)


def hf_nll(model):
    ids = torch.tensor([list(TEXT[:SEQ + 1])])
    with torch.no_grad():
        logits = model(ids[:, :SEQ]).logits[0].double()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").numpy()


def compare_nll(ours, ref, what):
    rel = np.max(np.abs(ours - ref) / np.abs(ref))
    check(ours.shape == ref.shape and rel <= 1e-4,
          f"{what}: per-token NLL differs from transformers: max relative {rel:.3g} (> 1e-4)")
    return rel


def ringtrain_generate(target, n=32):
    p = run("generate", target, "--prompt", PROMPT, "--max-new", str(n))
    out = p.stdout
    check(out.startswith(PROMPT.encode()) and out.endswith(b"\n") and
          len(out) == len(PROMPT) + n + 1, f"generate output has an unexpected form: {out!r}")
    return list(out[len(PROMPT):-1])


def hf_generate(model, n=32):
    ids = torch.tensor([list(PROMPT.encode())])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def h5_model(path):
    with h5py.File(path, "r") as f:
        return {k: np.array(v) for k, v in f["model"].items()}


def st_tensors(d):
    """All tensors of an HF directory, as torch tensors in their file dtype."""
    out = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(d, name), "pt") as f:
                for k in f.keys():
                    out[k] = f.get_tensor(k)
    return out


def load_exported(d, dtype=torch.float32):
    model, info = LlamaForCausalLM.from_pretrained(d, output_loading_info=True, torch_dtype=dtype)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        check(not info[k], f"{d}: from_pretrained reports {k}: {info[k]}")
    return model.eval()


with open(os.path.join(WORK, "text.txt"), "wb") as f:
    f.write(TEXT)

# ---- models made by transformers ------------------------------------------------
VARIANTS = [
    # name, heads, kv heads, tied, rope_scaling, file dtype, max_shard_size
    ("mha-untied-fp32", 4, 4, False, None, torch.float32, None),
    # max_position_embeddings 64 < SEQ: dynamic NTK rescales for the eval.
    ("gqa-dynamic-fp32", 4, 2, False, {"type": "dynamic", "factor": 2.0}, torch.float32, None),
    ("gqa-tied-bf16-sharded", 4, 2, True, None, torch.bfloat16, "40KB"),
    ("gqa-llama3-fp32-sharded", 4, 2, False,
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 32}, torch.float32, "60KB"),
    ("mqa-yarn-bf16", 4, 1, False, {"type": "yarn", "factor": 4.0}, torch.bfloat16, None),
    ("gqa-tied-linear-fp16", 4, 2, True, {"type": "linear", "factor": 2.0}, torch.float16, None),
]
report = []
for name, heads, kv, tied, scaling, dtype, shard in VARIANTS:
    d = os.path.join(WORK, name)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=64 if "dynamic" in name else 128,
                      rope_theta=10000.0, rope_scaling=scaling,
                      tie_word_embeddings=tied, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # weights that make the logits far from uniform
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    model = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(d, safe_serialization=True, **kw)
    check(os.path.exists(os.path.join(d, "model.safetensors.index.json")) == bool(shard),
          f"{name}: transformers did not write the expected layout")
    # Side files the export must carry back unchanged.
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 128, "note": name}, f)
    ref_model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    ref = hf_nll(ref_model)

    ckpt = os.path.join(WORK, name + ".h5")
    run("import", d, "--out", ckpt)
    imported = ringtrain_nll(ckpt, name)
    rel = compare_nll(imported, ref, f"{name} imported")
    check(np.array_equal(ringtrain_nll(d, name + "-dir"), imported),
          f"{name}: eval on the HF directory differs from eval on the imported checkpoint")
    ours, theirs = ringtrain_generate(ckpt), hf_generate(ref_model)
    check(ours == theirs, f"{name}: greedy tokens differ:\n ringtrain {ours}\n transformers {theirs}")

    # Round trip: export in the source dtype, re-import, compare bit for bit.
    src_dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp32"}[dtype]
    exp = os.path.join(WORK, name + "-export")
    run("export", ckpt, "--out", exp, "--dtype", src_dtype, *(["--max-shard-size", shard] if shard else []))
    check(os.path.exists(os.path.join(exp, "model.safetensors.index.json")) == bool(shard),
          f"{name}: export sharding differs from the source's")
    with open(os.path.join(exp, "tokenizer_config.json")) as f:
        check(json.load(f)["note"] == name, f"{name}: tokenizer_config.json not carried")
    a, b = st_tensors(d), st_tensors(exp)
    if tied:
        a.pop("lm_head.weight", None)
    check(sorted(a) == sorted(b), f"{name}: exported tensor names differ: {sorted(set(a) ^ set(b))}")
    for k in a:
        x = a[k].float() if dtype == torch.float16 else a[k]
        check(x.dtype == b[k].dtype and torch.equal(x, b[k]), f"{name}: exported {k} differs")
    ckpt2 = os.path.join(WORK, name + "-2.h5")
    run("import", exp, "--out", ckpt2)
    m1, m2 = h5_model(ckpt), h5_model(ckpt2)
    check(m1.keys() == m2.keys() and all(np.array_equal(m1[k], m2[k]) for k in m1),
          f"{name}: import -> export -> import is not bit-identical")
    exported = load_exported(exp)
    check(np.array_equal(hf_nll(exported), ref), f"{name}: the exported model's NLL differs")
    report.append(f"{name}: NLL max rel {rel:.2e}, greedy 32/32, round trip bit-identical")

# ---- models trained by ringtrain, exported --------------------------------------
TRAINED = [
    ("rope", None),
    ("llama3", "{rope_type: llama3, factor: 4, original_max_position_embeddings: 48}"),
    ("yarn", "{rope_type: yarn, factor: 4}"),
    ("ntk", "{rope_type: ntk, factor: 4}"),
]
for tag, scaling in TRAINED:
    run_dir = os.path.join(WORK, "run-" + tag)
    y = os.path.join(WORK, f"train-{tag}.yaml")
    with open(y, "w") as f:
        f.write(f"""run: {{name: hf-{tag}, dir: {run_dir}, seed: 3}}
model: {{vocab_size: 256, hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 192,
        rope_scaling: {scaling or 'null'}}}
data: {{train: {os.path.join(WORK, 'text.txt')}}}
train: {{seq_len: 64, micro_batch_size: 2, global_batch_size: 2, max_steps: 3,
        optimizer: {{lr: 3.0e-3}}, schedule: {{type: constant, warmup_steps: 0}}}}
checkpoint: {{every_steps: 3}}
""")
    run("train", y)
    ckpt = os.path.join(run_dir, "checkpoints", "step_00000003.h5")
    exp = os.path.join(WORK, "trained-" + tag)
    p = run("export", ckpt, "--out", exp, "--dtype", "fp32")
    with open(os.path.join(exp, "config.json")) as f:
        conf = json.load(f)
    check(conf["architectures"] == ["LlamaForCausalLM"] and conf["torch_dtype"] == "float32",
          f"trained-{tag}: config.json {conf}")
    model = load_exported(exp)
    # The checkpoint's own weights in transformers' model: the same logits, bit for bit.
    sd = {k: torch.from_numpy(v) for k, v in h5_model(ckpt).items()}
    ref = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in conf.items()
                                          if k not in ("architectures", "torch_dtype")})).eval()
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    check(not missing and not unexpected, f"trained-{tag}: h5 names {missing} {unexpected}")
    ids = torch.tensor([list(TEXT[:SEQ])])
    with torch.no_grad():
        check(torch.equal(model(ids).logits, ref(ids).logits),
              f"trained-{tag}: exported logits differ from the checkpoint's weights")
    rel = compare_nll(ringtrain_nll(ckpt, "trained-" + tag), hf_nll(model), f"trained-{tag} exported")
    # bf16 export: every tensor is the checkpoint's rounded to nearest even.
    exp16 = os.path.join(WORK, "trained16-" + tag)
    run("export", ckpt, "--out", exp16)
    b = st_tensors(exp16)
    check(all(b[k].dtype == torch.bfloat16 and torch.equal(b[k], sd[k].to(torch.bfloat16))
              for k in sd), f"trained-{tag}: bf16 export is not round-to-nearest-even of fp32")
    load_exported(exp16, torch.bfloat16)
    report.append(f"trained-{tag}: exported logits bit-identical, NLL max rel {rel:.2e}, "
                  f"rope_scaling {conf['rope_scaling']}, rope_theta {conf['rope_theta']}")

print("\n".join(report))
print("hf_interop: all checks passed")
