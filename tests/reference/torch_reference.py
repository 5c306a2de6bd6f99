#!/usr/bin/python3
"""Independent PyTorch reference for ringtrain's model (SPEC §3, §4.1, §4.3, §5, docs/memory.md).

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
        Optional memory_type (string rmt|knn|compressive; absent: rmt when
        memory_tokens > 0, else no memory), for knn and compressive
        (docs/memory.md: segments of segment_length tokens, positions restarting,
        per-row stores empty at the start of every forward, no gradient through
        them; /logits the last segment's): memory_layers (int array, 0-based;
        a scalar or a string "0,2" also do; absent: [(3L-1)/4]); knn:
        memory_size, top_k (exact retrieval); compressive: memory_segments,
        rate, levels, compressed_size, compression (string mean|conv). Their parameters in /model/:
        model.layers.{l}.self_attn.memory_gate [H] (knn layers),
        model.layers.{l}.self_attn.compress.{i}.{key,value}.weight
        [kvd, rate*kvd] (compressive conv, i = 0-based level the slots go to);
        neither gets weight decay.
        Optional /doc_starts int [B, D]: each row's document start positions
        (0..T-1; -1 pads), which prune the knn/compressive stores.
        Compressive conv: the gradient (and AdamW's) is that of loss +
        rec / n_valid (rec: the attention-reconstruction loss, reaching only the
        conv weights); /loss and /adamw_losses are the main loss.
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
      relative; knn/compressive with the stores replayed as constants) and its
      AdamW against AdamW written out, for plain, RMT, knn and compressive
      models; knn retrieval against brute force (ties: older row first), the
      store bounds and contents, knn with a shut gate = the plain model by
      segments, compressive without compression = the plain model, bad
      memory settings; exit 1 on failure.
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


def body(params, x, cfg, dtype, memory=None):
    """input embeddings x [B,T,d] -> the last layer's output [B,T,d] (before the final norm);
    with a memory (knn/compressive), its layers' attention is memory.attention of the
    pre-position q, k, v"""
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
        if memory is not None and l in memory.layers:
            o = memory.attention(l, q, k, v)
        else:
            if cfg["position"] == "rope":
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
            o = attention(q, k, v, cfg, dtype)
        x = x + o.reshape(B, T, H * h) @ p("self_attn.o_proj.weight").T
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


# ---- knn and compressive memory (docs/memory.md) ----------------------------------------

def attend_at(q, k, v, q_pos, k_pos, cfg, dtype):
    """The ordinary attention at given positions: q [B,Tq,H,h], k,v [B,Tk,G,h] pre-position,
    q_pos [Tq], k_pos [Tk] integer positions; RoPE rotates q and k at their positions, ALiBi adds
    -slope_h * (q_pos - k_pos); causal k_pos <= q_pos; GQA. -> [B,Tq,H,h]"""
    B, Tq, H, h = q.shape
    G = k.shape[2]
    if cfg["position"] == "rope":
        cos, sin = rope_cos_sin(int(max(q_pos.max(), k_pos.max())) + 1, h, cfg["rope_theta"], dtype)
        rot = lambda x, p: x * cos[p][None, :, None, :] + rotate_half(x) * sin[p][None, :, None, :]
        q, k = rot(q, q_pos), rot(k, k_pos)
    k = k.repeat_interleave(H // G, dim=2)
    v = v.repeat_interleave(H // G, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B,H,T,h]
    s = q @ k.transpose(-1, -2) / math.sqrt(h)  # [B,H,Tq,Tk]
    dist = (q_pos[:, None] - k_pos[None, :]).to(torch.float64)
    if cfg["position"] == "alibi":
        s = s + (-alibi_slopes(H)[:, None, None] * dist[None]).to(dtype)
    s = s.masked_fill(dist < 0, float("-inf"))
    return (torch.softmax(s, dim=-1) @ v).transpose(1, 2)


def topk_older_first(s, n):
    """indices of the n largest entries of s along the last axis; ties: the lower index (the older
    stored row) first (a stable descending sort)"""
    return torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :n]


def knn_attend(q, K, V, top_k, detach_q=False):
    """Memory attention of one batch row: q [S,H,h] pre-position queries, K,V [N,G,h] the store
    (oldest first). Each (t,h) takes its n = min(top_k, N) best rows by s_j = scale q.K_j and
    returns sum_j softmax(s)_j V_j over them; 0 when the store is empty. -> [S,H,h]"""
    S, H, h = q.shape
    N, G = K.shape[0], K.shape[1]
    if N == 0:
        return torch.zeros_like(q)
    if detach_q:  # (a mutant for the selftest: no gradient through retrieval)
        q = q.detach()
    Kh = K.repeat_interleave(H // G, dim=1).transpose(0, 1)  # [H,N,h]
    Vh = V.repeat_interleave(H // G, dim=1).transpose(0, 1)
    s = q.transpose(0, 1) @ Kh.transpose(-1, -2) / math.sqrt(h)  # [H,S,N]
    idx = topk_older_first(s.detach(), min(top_k, N))  # [H,S,n]: the choice is not differentiated
    p = torch.softmax(torch.gather(s, -1, idx), dim=-1)
    chosen = Vh[torch.arange(H)[:, None, None], idx]  # [H,S,n,h]
    return (p[..., None] * chosen).sum(-2).transpose(0, 1)


def content_attention(Q, K, V):
    """softmax(scale Q K^T) V without mask or positions, GQA: Q [S,H,h], K,V [n,G,h] -> [H,S,h]"""
    S, H, h = Q.shape
    G = K.shape[1]
    Kh = K.repeat_interleave(H // G, dim=1).transpose(0, 1)
    Vh = V.repeat_interleave(H // G, dim=1).transpose(0, 1)
    return torch.softmax(Q.transpose(0, 1) @ Kh.transpose(-1, -2) / math.sqrt(h), dim=-1) @ Vh


class SegmentMemory:
    """What knn and compressive share: per memory layer and batch row a store, empty at the start
    of the sequence, written (detached) after each segment's forward, pruned at document starts.
    replay: the record() of an earlier run; its stores (and compression events) are used instead
    of this run's, so that finite differences see the stores as the gradient does: constants."""

    def __init__(self, cfg, params, B, dtype, replay=None):
        self.cfg, self.params, self.B, self.dtype, self.replay = cfg, params, B, dtype, replay
        self.layers = sorted(set(cfg["memory_layers"]))
        self.S = cfg["segment_length"]
        self.seg = 0
        self.store = {l: [self.empty() for _ in range(B)] for l in self.layers}
        self.pending = {}
        self.snapshots = {}  # (segment, layer, row) -> the store's (K, V) rows the segment used
        self.events = []  # compression events: (layer, level, Q, K_X, V_X) (compressive conv)
        self.doc_starts = cfg.get("doc_starts")  # per batch row: document start positions, or None

    def begin_segment(self, k):
        self.seg = k
        if not self.doc_starts or k == 0:
            return
        p0 = k * self.S
        for b in range(self.B):
            starts = [d for d in self.doc_starts[b] if 0 <= d <= p0]
            if starts:
                for l in self.layers:
                    self.prune(self.store[l][b], max(starts))

    def stored(self, l, b, make):
        key = (self.seg, l, b)
        kv = self.replay["snapshots"][key] if self.replay is not None else make()
        self.snapshots[key] = kv
        return kv

    def record(self):
        return {"snapshots": self.snapshots, "events": self.events}

    def aux_loss(self):
        return 0.0


class KnnMemory(SegmentMemory):
    """docs/memory.md, knn: FIFO of up to memory_size pre-position (K, V) rows; att = a*mem + (1-a)*loc"""

    def empty(self):
        G, h = self.cfg["num_key_value_heads"], self.cfg["head_dim"]
        z = torch.zeros(0, G, h, dtype=self.dtype)
        return {"k": z, "v": z, "pos": torch.zeros(0, dtype=torch.long)}

    def prune(self, st, start):
        keep = st["pos"] >= start
        for n in ("k", "v", "pos"):
            st[n] = st[n][keep]

    def attention(self, l, q, k, v):
        B, S, H, h = q.shape
        pos = torch.arange(S)
        loc = attend_at(q, k, v, pos, pos, self.cfg, self.dtype)
        mem = torch.stack([knn_attend(q[b], *self.stored(l, b, lambda: (self.store[l][b]["k"],
                                                                          self.store[l][b]["v"])),
                                      self.cfg["top_k"], self.cfg.get("_detach_retrieval_q", False))
                           for b in range(B)])
        a = torch.sigmoid(self.params[f"model.layers.{l}.self_attn.memory_gate"])[None, None, :, None]
        self.pending[l] = (k.detach(), v.detach())
        return a * mem + (1 - a) * loc

    def write(self):
        for l, (k, v) in self.pending.items():
            for b in range(self.B):
                st = self.store[l][b]
                pos = self.seg * self.S + torch.arange(k.shape[1])
                keep = self.cfg["memory_size"]
                st["k"] = torch.cat([st["k"], k[b]])[-keep:]
                st["v"] = torch.cat([st["v"], v[b]])[-keep:]
                st["pos"] = torch.cat([st["pos"], pos])[-keep:]
        self.pending = {}


class CompressiveMemory(SegmentMemory):
    """docs/memory.md, compressive: a FIFO of memory_segments segments and `levels` levels of
    compressed chunks; attention over [level_levels; ...; level_1; FIFO; segment] at concatenation
    positions; with conv, the attention-reconstruction loss of every compression."""

    def empty(self):
        return {"fifo": [], "levels": [[] for _ in range(self.cfg["levels"])]}

    def prune(self, st, start):
        # units (a FIFO segment, a compressed chunk) are kept or dropped whole, by their newest row
        st["fifo"] = [u for u in st["fifo"] if int(u[2].max()) >= start]
        st["levels"] = [[u for u in lev if int(u[2].max()) >= start] for lev in st["levels"]]

    def units(self, st):
        """the stored units, oldest first: level_levels ... level_1, then the FIFO"""
        return [u for lev in reversed(st["levels"]) for u in lev] + st["fifo"]

    def attention(self, l, q, k, v):
        B, S, H, h = q.shape
        G = k.shape[2]

        def concat(st):
            us = self.units(st)
            if not us:
                z = torch.zeros(0, G, h, dtype=self.dtype)
                return z, z
            return torch.cat([u[0] for u in us]), torch.cat([u[1] for u in us])
        outs = []
        for b in range(B):
            Km, Vm = self.stored(l, b, lambda: concat(self.store[l][b]))
            m = Km.shape[0]
            outs.append(attend_at(q[b:b + 1], torch.cat([Km, k[b]])[None], torch.cat([Vm, v[b]])[None],
                                  m + torch.arange(S), torch.arange(m + S), self.cfg, self.dtype)[0])
        self.pending[l] = (k.detach(), v.detach(), q.detach())
        return torch.stack(outs)

    def weight(self, l, i, which):
        return self.params[f"model.layers.{l}.self_attn.compress.{i}.{which}.weight"]

    def compress(self, l, i, X, which, live=False):
        """n rows X [n,G,h] -> n/rate slots: means of `rate` consecutive rows, or W_i applied to
        their concatenation (conv; W detached unless live)"""
        n, G, h = X.shape
        r = self.cfg["rate"]
        if self.cfg["compression"] == "mean":
            return X.reshape(n // r, r, G, h).mean(1)
        W = self.weight(l, i, which)
        return (X.reshape(n // r, r * G * h) @ (W if live else W.detach()).T).view(n // r, G, h)

    def write(self):
        for l, (k, v, q) in self.pending.items():
            for b in range(self.B):
                st = self.store[l][b]
                st["fifo"].append((k[b], v[b], self.seg * self.S + torch.arange(k.shape[1])))
                if len(st["fifo"]) > self.cfg["memory_segments"]:
                    self.push(l, st, 0, st["fifo"].pop(0), q[b])
        self.pending = {}

    def push(self, l, st, i, unit, Q):
        """compresses `unit` into level i (0-based), cascading the overflow to level i+1"""
        K, V, pos = unit
        if self.cfg["compression"] == "conv":
            self.events.append((l, i, Q, K, V))
        r = self.cfg["rate"]
        lev = st["levels"][i]
        lev.append((self.compress(l, i, K, "key"), self.compress(l, i, V, "value"),
                    pos.view(-1, r).max(1).values))  # a slot's position: its newest row's
        cap = self.cfg["compressed_size"] // self.cfg["levels"]
        if sum(u[0].shape[0] for u in lev) > cap:
            old = lev.pop(0)
            if i + 1 < self.cfg["levels"]:
                self.push(l, st, i + 1, old, Q)

    def aux_loss(self):
        """sum over compression events of rec = mean_{t,h,i} (o1 - o2)^2; only the conv weights
        carry gradient (Q, K_X, V_X are detached stored values)"""
        events = self.replay["events"] if self.replay is not None else self.events
        rec = 0.0
        for l, i, Q, K, V in events:
            o1 = content_attention(Q, K, V)
            o2 = content_attention(Q, self.compress(l, i, K, "key", live=True),
                                   self.compress(l, i, V, "value", live=True))
            rec = rec + ((o1 - o2) ** 2).mean()
        return rec


def memory_loss(params, tokens, targets, cfg, dtype, replay=None):
    """knn / compressive: segments in order, positions restarting; -> (main loss = mean over valid
    targets of all segments, the last segment's logits, aux = rec / n_valid (compressive conv; 0
    otherwise), the record of the stores for replay)"""
    S = cfg["segment_length"]
    B, T = tokens.shape
    mem = (KnnMemory if cfg["memory_type"] == "knn" else CompressiveMemory)(cfg, params, B, dtype, replay)
    total, count, logits = 0.0, 0, None
    for k in range(T // S):
        mem.begin_segment(k)
        out = body(params, params["model.embed_tokens.weight"][tokens[:, k * S:(k + 1) * S]], cfg, dtype,
                   memory=mem)
        logits = head(params, out, cfg)
        tgt = targets[:, k * S:(k + 1) * S].reshape(-1)
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt, ignore_index=-1, reduction="sum")
        count += int((tgt >= 0).sum())
        if replay is None:  # (a replay reads the recorded stores)
            mem.write()  # after the segment: the store gets no gradient
        mem.pending = {}
    return total / count, logits, mem.aux_loss() / count, mem.record()


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
MEMORY_INT = ["memory_tokens", "segment_length", "bptt_segments", "memory_size", "top_k",
              "memory_segments", "rate", "levels", "compressed_size"]


def as_str(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def memory_config(attrs, cfg):
    """the memory attributes of IN.h5 (absent: no memory); memory_layers defaults to (3L-1)/4"""
    for k in MEMORY_INT:
        cfg[k] = int(attrs[k]) if k in attrs else 0
    if "memory_type" in attrs:
        cfg["memory_type"] = as_str(attrs["memory_type"])
    else:
        cfg["memory_type"] = "rmt" if cfg["memory_tokens"] > 0 else ""
    cfg["compression"] = as_str(attrs["compression"]) if "compression" in attrs else "mean"
    L = cfg["num_hidden_layers"]
    layers = attrs.get("memory_layers")
    if layers is None:
        cfg["memory_layers"] = [(3 * L - 1) // 4]
    elif isinstance(layers, (bytes, str)):  # also "0,2" (a string attribute)
        cfg["memory_layers"] = [int(x) for x in as_str(layers).split(",") if x.strip()]
    else:
        cfg["memory_layers"] = [int(x) for x in np.atleast_1d(layers)]


def check_memory_config(cfg, T):
    """the settings docs/memory.md requires; raises ValueError naming the attribute"""
    mt = cfg.get("memory_type", "")
    if mt not in ("", "rmt", "knn", "compressive"):
        raise ValueError(f"memory_type {mt!r}: expected rmt, knn or compressive")
    if mt not in ("knn", "compressive"):
        return
    S = cfg["segment_length"]
    if S < 1 or T % S:
        raise ValueError(f"segment_length {S}: must be >= 1 and divide the sequence length {T}")
    if not cfg["memory_layers"] or any(not 0 <= l < cfg["num_hidden_layers"] for l in cfg["memory_layers"]):
        raise ValueError(f"memory_layers {cfg['memory_layers']}: "
                         f"layers are 0..{cfg['num_hidden_layers'] - 1}")
    if mt == "knn":
        if cfg["top_k"] < 1 or cfg["memory_size"] < cfg["top_k"]:
            raise ValueError(f"top_k {cfg['top_k']}, memory_size {cfg['memory_size']}: "
                             "need 1 <= top_k <= memory_size")
        return
    r, n, c = cfg["rate"], cfg["levels"], cfg["compressed_size"]
    if r < 2:
        raise ValueError(f"rate {r}: must be >= 2")
    if n < 1 or cfg["memory_segments"] < 0:
        raise ValueError(f"levels {n}, memory_segments {cfg['memory_segments']}: "
                         "need levels >= 1, memory_segments >= 0")
    if c % n or c // n < S // r:
        raise ValueError(f"compressed_size {c}: must be a multiple of levels ({n}) with "
                         f"compressed_size/levels >= segment_length/rate ({S // r})")
    if S % r ** n:
        raise ValueError(f"segment_length {S}: must be a multiple of rate^levels ({r ** n})")
    if cfg["compression"] not in ("mean", "conv"):
        raise ValueError(f"compression {cfg['compression']!r}: expected mean or conv")


def read_input(path, dtype):
    with h5py.File(path, "r") as f:
        cfg = {k: int(f.attrs[k]) for k in CONFIG_INT if k != "head_dim"}
        cfg["head_dim"] = int(f.attrs.get("head_dim", 0))
        cfg.update({k: float(f.attrs[k]) for k in CONFIG_FLOAT})
        if cfg["head_dim"] <= 0:  # SPEC §2: head_dim null -> hidden_size / heads
            cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
        memory_config(f.attrs, cfg)
        cfg["position"] = as_str(f.attrs["position"])
        params = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                params[name] = torch.tensor(obj[()], dtype=dtype, requires_grad=True)
        f["model"].visititems(visit)
        tokens = torch.tensor(f["inputs"][()].astype(np.int64))
        targets = torch.tensor(f["targets"][()].astype(np.int64))
        if "doc_starts" in f:  # [B, D] document start positions in each row, -1 = none
            rows = np.atleast_2d(f["doc_starts"][()])
            cfg["doc_starts"] = [[int(d) for d in row if d >= 0] for row in rows]
    return cfg, params, tokens, targets


def decays(name, cfg):
    if name.endswith("self_attn.memory_gate") or ".self_attn.compress." in name:
        return False  # docs/memory.md: no weight decay
    if cfg["no_decay_norms"] and (name.endswith("layernorm.weight") or name == "model.norm.weight"):
        return False
    if cfg["no_decay_embeddings"] and name == "model.embed_tokens.weight":
        return False
    return True


def compute_loss(params, tokens, targets, cfg, dtype, replay=None):
    """-> (loss, logits [B,T,V]; with memory, the last segment's, aux: the term added to the loss
    for the gradient only (compressive conv: rec / n_valid; else 0), record: the stores for
    replay (knn/compressive; else None))"""
    mt = cfg.get("memory_type") or ("rmt" if cfg.get("memory_tokens", 0) > 0 else "")
    if mt in ("knn", "compressive"):
        return memory_loss(params, tokens, targets, cfg, dtype, replay)
    if mt == "rmt":
        return rmt_loss(params, tokens, targets, cfg, dtype) + (0.0, None)
    logits = forward(params, tokens, cfg, dtype)
    return loss_fn(logits, targets), logits, 0.0, None


def golden(args):
    dtype = getattr(torch, args.dtype)
    cfg, params, tokens, targets = read_input(args.input, dtype)
    try:
        check_memory_config(cfg, tokens.shape[1])
    except ValueError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        sys.exit(2)
    missing = sorted(set(memory_params(cfg, dtype)) - set(params))
    if missing:
        print(f"error: {args.input}: /model/ lacks the memory parameters {missing}", file=sys.stderr)
        sys.exit(2)
    model_loss = lambda: compute_loss(params, tokens, targets, cfg, dtype)

    # the reported loss is the main loss; its gradient adds aux (compressive conv: rec / n_valid)
    loss, logits, aux, _ = model_loss()
    (loss + aux).backward()
    # (a parameter the loss does not reach, e.g. conv weights of a level no compression reached: 0)
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in params.items()}
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
        l, _, aux, _ = model_loss()
        (l + aux).backward()
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
    params.update(memory_params(cfg, dtype))
    return params


def memory_params(cfg, dtype):
    """the learned parameters of knn (memory_gate [H], 0) and compressive conv (compress.{i}.key/
    value.weight [kvd, rate*kvd], mean pooling: I/rate blocks) at their initial values"""
    out = {}
    mt = cfg.get("memory_type", "")
    L = cfg["num_hidden_layers"]
    for l in cfg.get("memory_layers", [(3 * L - 1) // 4]) if mt in ("knn", "compressive") else []:
        if mt == "knn":
            H = cfg["num_attention_heads"]
            out[f"model.layers.{l}.self_attn.memory_gate"] = torch.zeros(H, dtype=dtype)
        elif cfg["compression"] == "conv":
            kvd, r = cfg["num_key_value_heads"] * cfg["head_dim"], cfg["rate"]
            for i in range(cfg["levels"]):
                for w in ("key", "value"):
                    out[f"model.layers.{l}.self_attn.compress.{i}.{w}.weight"] = \
                        torch.eye(kvd, dtype=dtype).repeat(1, r) / r
    return {n: t.requires_grad_(True) for n, t in out.items()}


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
        for k in CONFIG_INT + MEMORY_INT:
            if k in cfg:
                f.attrs[k] = np.int64(cfg[k])
        for k in CONFIG_FLOAT:
            f.attrs[k] = np.float64(cfg[k])
        f.attrs["position"] = cfg["position"]
        for k in ("memory_type", "compression"):
            if k in cfg:
                f.attrs[k] = cfg[k]
        if "memory_layers" in cfg:
            f.attrs["memory_layers"] = np.array(cfg["memory_layers"], dtype=np.int64)
        if cfg.get("doc_starts"):
            D = max(len(r) for r in cfg["doc_starts"])
            f["doc_starts"] = np.array([r + [-1] * (D - len(r)) for r in cfg["doc_starts"]], dtype=np.int64)
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


def knn_config(position, **extra):
    return tiny_config(position, 4, 2, False, memory_type="knn", steps=2, **extra)


def compressive_config(position, **extra):
    return tiny_config(position, 4, 2, False, memory_type="compressive", steps=2, **extra)


# golden cases of knn and compressive memory (GQA H=4, G=2; _T: the sequence length)
MEMORY_CASES = [
    # FIFO dropping part of a segment (10 rows of 6-row segments), both layers
    ("knn_rope", knn_config("rope", segment_length=6, memory_size=10, top_k=4, memory_layers=[0, 1], _T=24)),
    # top_k = memory_size (every stored row), tied head, document starts
    ("knn_alibi_docs", knn_config("alibi", tie_word_embeddings=1, segment_length=6, memory_size=12, top_k=12,
                                  memory_layers=[1], doc_starts=[[0, 9], [0, 13]], _T=24)),
    ("knn_none", knn_config("none", segment_length=5, memory_size=6, top_k=3, memory_layers=[0], _T=20)),
    # two levels: FIFO -> level 1 (4-slot chunks) -> level 2 (2-slot chunks: a 1-slot chunk would
    # leave its key weights without gradient), conv at both levels, both layers
    ("compressive_rope_conv", compressive_config(
        "rope", segment_length=8, memory_segments=1, rate=2, levels=2, compressed_size=8,
        compression="conv", memory_layers=[0, 1], _T=32)),
    ("compressive_alibi_mean_docs", compressive_config(
        "alibi", segment_length=8, memory_segments=0, rate=2, levels=1, compressed_size=8,
        compression="mean", memory_layers=[1], doc_starts=[[0, 13], [0]], _T=32)),
    # default layer ((3L-1)/4 = 1), rate 2 into 2 slots, the last level drops its oldest chunk
    ("compressive_none_conv", tiny_config("none", 4, 2, False, memory_type="compressive", steps=2,
                                          segment_length=4, memory_segments=1, rate=2, levels=1,
                                          compressed_size=2, compression="conv", _T=20)),
]


def plain_by_segments(params, tokens, targets, cfg, S):
    """the plain model run on each segment alone (positions restarting): (mean loss, last logits)"""
    total, count, logits = 0.0, 0, None
    for k in range(tokens.shape[1] // S):
        logits = forward(params, tokens[:, k * S:(k + 1) * S], cfg, torch.float64)
        tgt = targets[:, k * S:(k + 1) * S].reshape(-1)
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt, ignore_index=-1, reduction="sum")
        count += int((tgt >= 0).sum())
    return total / count, logits


def selftest_memory(check):
    """knn and compressive pieces: retrieval against brute force with ties, store bounds and
    contents, the limits where they equal the plain model, the retrieval gradient's size, bad
    settings. (Gradients against finite differences and AdamW: MEMORY_CASES in selftest.)"""
    f64 = torch.float64
    close = lambda a, b, tol: abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))

    # (1) retrieval against brute force; integer data, so scores tie often and exactly
    S, H, G, h, N = 6, 4, 2, 4, 9
    q = torch.randint(-2, 3, (S, H, h)).to(f64)
    K = torch.randint(-1, 2, (N, G, h)).to(f64)
    K[7] = K[2]  # a repeated key: an exact tie between an older and a newer row
    V = torch.randn(N, G, h, dtype=f64)

    def brute(top_k, older_first=True):
        out = torch.zeros(S, H, h, dtype=f64)
        for t in range(S):
            for hh in range(H):
                g = hh // (H // G)
                s = [float(q[t, hh] @ K[j, g]) / math.sqrt(h) for j in range(N)]
                order = sorted(range(N), key=lambda j: (-s[j], j if older_first else -j))[:min(top_k, N)]
                e = [math.exp(s[j] - s[order[0]]) for j in order]
                for w, j in zip(e, order):
                    out[t, hh] += w / sum(e) * V[j, g]
        return out
    differs = False
    for top_k in (1, 2, 3, 9, 20):
        want = brute(top_k)
        check(torch.allclose(knn_attend(q, K, V, top_k), want, rtol=0, atol=1e-12),
              f"knn retrieval top_k={top_k} vs brute force (ties: older row first)")
        differs |= not torch.allclose(brute(top_k, older_first=False), want, rtol=0, atol=1e-12)
    check(differs, "knn tie test: newer-first ties would give another answer (test can fail)")
    check(bool((knn_attend(q, K[:0], V[:0], 3) == 0).all()), "knn: an empty store gives mem = 0")

    # (2) knn store: FIFO bounded by memory_size, the newest rows; document starts prune
    cfg = knn_config("rope", segment_length=4, memory_size=7, top_k=2, memory_layers=[0],
                     doc_starts=[[0, 10], [0]])
    prm = random_params(cfg, f64, std=0.3)
    mem, B, G, h = KnnMemory(cfg, prm, 2, f64), 2, 2, 8
    rows = []
    for k in range(6):
        mem.begin_segment(k)
        if k == 3:  # p0 = 12: row 0's document started at 10 -> rows before 10 dropped
            check(mem.store[0][0]["pos"].tolist() == [10, 11],
                  f"knn doc start prune: {mem.store[0][0]['pos']}")
            check(mem.store[0][1]["pos"].tolist() == list(range(5, 12)), "knn doc start: other row kept")
        kk, vv = torch.randn(B, 4, G, h, dtype=f64), torch.randn(B, 4, G, h, dtype=f64)
        mem.attention(0, torch.randn(B, 4, 4, h, dtype=f64), kk, vv)
        mem.write()
        rows.append(kk[1])
        st = mem.store[0][1]
        n = min(4 * (k + 1), 7)
        check(st["k"].shape[0] == n and st["pos"].tolist() == list(range(4 * (k + 1)))[-n:]
              and torch.equal(st["k"], torch.cat(rows)[-n:]),
              f"knn FIFO after segment {k}: {st['pos'].tolist()}")
        check(mem.store[0][0]["k"].shape[0] <= 7, "knn store bound")

    # (3) compressive store: FIFO of 2 segments, level 1 (cap 4 = one chunk of S/2), level 2
    # (cap 4 = two chunks of S/4), then dropped; mean compression; document start pruning
    cfg = compressive_config("rope", segment_length=8, memory_segments=2, rate=2, levels=2, compressed_size=8,
                             compression="mean", memory_layers=[1], doc_starts=[[0], [0, 45]])
    mem = CompressiveMemory(cfg, random_params(cfg, f64), 2, f64)
    raw = []
    pool = lambda x, r: x.reshape(x.shape[0] // r, r, G, h).mean(1)
    for k in range(8):
        mem.begin_segment(k)
        if k == 6:  # p0 = 48, document at 45: units whose newest row < 45 dropped; (32..39) goes
            st = mem.store[1][1]
            check(len(st["fifo"]) == 1 and int(st["fifo"][0][2][0]) == 40 and not any(st["levels"]),
                  "compressive doc start prune: only the FIFO segment 40..47 is kept")
        kk = torch.randn(2, 8, G, h, dtype=f64)
        mem.attention(1, torch.randn(2, 8, 4, h, dtype=f64), kk, kk + 1)
        mem.write()
        raw.append(kk[0])
        st = mem.store[1][0]
        fifo = [u[0] for u in st["fifo"]]
        check(len(fifo) == min(k + 1, 2) and all(torch.equal(a, b) for a, b in zip(fifo, raw[-2:])),
              f"compressive FIFO after segment {k}")
        l1 = [raw[j] for j in [k - 2] if j >= 0]
        l2 = [raw[j] for j in [k - 4, k - 3] if j >= 0]
        ok = [u[0].shape[0] for u in st["levels"][0]] == [4] * len(l1) and \
            [u[0].shape[0] for u in st["levels"][1]] == [2] * len(l2)
        ok = ok and all(torch.allclose(u[0], pool(x, 2), atol=1e-14) for u, x in zip(st["levels"][0], l1))
        ok = ok and all(torch.allclose(u[0], pool(x, 4), atol=1e-14) and torch.allclose(u[1], pool(x, 4) + 1)
                        for u, x in zip(st["levels"][1], l2))
        check(ok, f"compressive levels after segment {k}: "
                  f"{[[u[2].tolist() for u in lev] for lev in st['levels']]}")
        pos = torch.cat([u[2] for u in mem.units(st)])
        check(bool((pos[1:] > pos[:-1]).all()), "compressive: concatenation oldest first")
        if k >= 4:  # slot positions: the newest row each summarises
            check(st["levels"][1][0][2].tolist() == [8 * (k - 4) + 3, 8 * (k - 4) + 7],
                  "compressed slot positions")

    # (4) limits where the memory models equal the plain model, for every position scheme
    for position in ("rope", "alibi", "none"):
        cfg = knn_config(position, segment_length=6, memory_size=12, top_k=4, memory_layers=[0, 1])
        prm = random_params(cfg, f64, std=0.3)
        tokens, targets = tiny_batch(cfg, T=18)
        want, want_logits = plain_by_segments(prm, tokens, targets, cfg, 6)
        with torch.no_grad():
            for l in (0, 1):
                prm[f"model.layers.{l}.self_attn.memory_gate"].copy_(torch.randn(4, dtype=f64))
        got = compute_loss(prm, tokens, targets, cfg, f64)[0]
        check(not close(got, want, 1e-6), f"knn {position}: the memory changes the loss ({got} vs {want})")
        check(close(compute_loss(prm, tokens, targets, cfg, f64)[0], got, 0),
              f"knn {position}: a new forward starts from an empty store")
        # with the gate shut, the attention is the local one
        cfg_d = dict(cfg, _detach_retrieval_q=True)
        lm = compute_loss(prm, tokens, targets, cfg, f64)[0]
        gq = torch.autograd.grad(lm, prm["model.layers.1.self_attn.q_proj.weight"])[0]
        lm = compute_loss(prm, tokens, targets, cfg_d, f64)[0]
        gd = torch.autograd.grad(lm, prm["model.layers.1.self_attn.q_proj.weight"])[0]
        check((gq - gd).norm() > 1e-3 * gq.norm(), f"knn {position}: the retrieval path carries Wq gradient")
        with torch.no_grad():
            for l in (0, 1):
                prm[f"model.layers.{l}.self_attn.memory_gate"].fill_(-50.0)
        got, logits = compute_loss(prm, tokens, targets, cfg, f64)[:2]
        check(close(got, want, 1e-12) and torch.allclose(logits, want_logits, rtol=0, atol=1e-10),
              f"knn {position}: gate -50 equals the plain model by segments ({got.item()} vs {want.item()})")

        # compressive, nothing compressed: one segment = the plain model on it; all layers with
        # memory and every earlier segment at full resolution = the plain model on the whole
        # sequence (concatenation positions = sequence positions)
        for compression in ("mean", "conv"):
            cfg = compressive_config(position, segment_length=6, memory_segments=4, rate=2, levels=1,
                                     compressed_size=4, compression=compression, memory_layers=[0, 1])
            prm = random_params(cfg, f64, std=0.3)
            tokens, targets = tiny_batch(cfg, T=24)
            l1, lg1 = compute_loss(prm, tokens[:, :6], targets[:, :6], cfg, f64)[:2]
            w1 = forward(prm, tokens[:, :6], cfg, f64)
            check(close(l1, loss_fn(w1, targets[:, :6]), 1e-12)
                  and torch.allclose(lg1, w1, rtol=0, atol=1e-10),
                  f"compressive {position} {compression}: one segment equals the plain model")
            lw, lgw, aux = compute_loss(prm, tokens, targets, cfg, f64)[:3]
            w = forward(prm, tokens, cfg, f64)
            check(close(lw, loss_fn(w, targets), 1e-12) and torch.allclose(lgw, w[:, -6:], rtol=0, atol=1e-10)
                  and aux == 0.0, f"compressive {position} {compression}: full-resolution memory of all "
                  f"segments equals the plain model on the sequence "
                  f"({lw.item()} vs {loss_fn(w, targets).item()})")
            lc = compute_loss(prm, tokens, targets, dict(cfg, memory_segments=1), f64)[0]
            check(not close(lc, lw, 1e-6), f"compressive {position}: compression changes the loss")

    # conv at its initialisation (mean pooling) stores what mean does: the same main loss, while
    # rec > 0 (a mean-pooled chunk attends differently) stays out of it and reaches only the weights
    cfg = compressive_config("alibi", segment_length=8, memory_segments=0, rate=2, levels=2,
                             compressed_size=8, compression="conv", memory_layers=[0, 1])
    prm = random_params(cfg, f64, std=0.3)
    tokens, targets = tiny_batch(cfg, T=32)
    lc, _, aux, _ = compute_loss(prm, tokens, targets, cfg, f64)
    lm = compute_loss(prm, tokens, targets, dict(cfg, compression="mean"), f64)[0]
    check(close(lc, lm, 1e-13) and float(aux) > 0,
          f"compressive conv at init = mean ({lc} vs {lm}), rec {aux}")
    conv = [prm[n] for n in prm if ".compress." in n]
    g_main = torch.autograd.grad(lc, conv, allow_unused=True, retain_graph=True)
    g_all = torch.autograd.grad(lc + aux, conv, retain_graph=True)
    g_rec = torch.autograd.grad(aux, conv)
    check(all(g is None for g in g_main) and all(torch.equal(a, b) and a.abs().max() > 0
                                                 for a, b in zip(g_all, g_rec)),
          "compressive conv: the conv weights' gradient is that of rec / n_valid alone")

    # (5) bad settings are refused, naming the attribute
    base = knn_config("rope", segment_length=6, memory_size=4, top_k=8, memory_layers=[1])
    for bad, key in [(base, "top_k"), (dict(base, top_k=2, memory_layers=[2]), "memory_layers"),
                     (dict(base, top_k=2, segment_length=5), "segment_length"),
                     (compressive_config("rope", segment_length=8, memory_segments=1, rate=1, levels=1,
                                         compressed_size=8, compression="mean", memory_layers=[1]), "rate"),
                     (compressive_config("rope", segment_length=8, memory_segments=1, rate=2, levels=2,
                                         compressed_size=6, compression="mean", memory_layers=[1]),
                      "compressed_size"),
                     (compressive_config("rope", segment_length=8, memory_segments=1, rate=2, levels=4,
                                         compressed_size=16, compression="mean", memory_layers=[1]),
                      "segment_length")]:
        try:
            check_memory_config(bad, 24)
            check(False, f"bad {key} accepted")
        except ValueError as e:
            check(str(e).startswith(key), f"bad {key}: message {e}")


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
        loss, _, aux, _ = compute_loss(params, tokens, targets, cfg, torch.float64)
        (loss + aux).backward()
        losses.append(loss.item())
        g = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
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
                                      bptt_segments=-1))] + MEMORY_CASES
    with tempfile.TemporaryDirectory() as tmp:
        for tag, cfg in cases:
            T = cfg.pop("_T", 18 if cfg.get("memory_tokens") else 17)
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
                        p.add_(0.3 * torch.randn_like(p))  # norms away from 1 (gates away from 0)
                    if ".compress." in n:
                        p.add_(0.1 * torch.randn_like(p))  # conv weights away from mean pooling
            src, out = run_golden(tmp, tag, cfg, params, tokens, targets)
            cfg_in, p64, tok, tgt = read_input(src, torch.float64)
            check(set(out["grad"]) == set(p64), f"{tag}: gradient names {sorted(out['grad'])}")
            for n in p64:  # (else their finite-difference check below would be vacuous)
                if "memory_gate" in n or ".compress." in n:
                    check(out["grad"][n].abs().max() > 1e-4, f"{tag}: {n} has a gradient")
            # the gradient treats the stores as constants (no gradient through a store), so the
            # finite differences replay the stores (and compression events) of the unperturbed run;
            # they differentiate the loss plus aux (rec / n_valid), as golden's backward does
            record = compute_loss(p64, tok, tgt, cfg_in, torch.float64)[3]

            def loss_at():
                l, _, aux, _ = compute_loss(p64, tok, tgt, cfg_in, torch.float64, replay=record)
                return (l + aux).item()
            worst = 0.0
            names = sorted(p64)
            if cfg_in.get("memory_type") in ("knn", "compressive"):
                # (time) the memory layers' attention (q, k, v, o, gate, conv) and the model's ends;
                # the rest is the plain model's machinery, checked by the cases above
                names = [n for n in names if not n.startswith("model.layers.") or
                         (".self_attn." in n and int(n.split(".")[2]) in cfg_in["memory_layers"])]
            with torch.no_grad():
                for n in names:
                    g = out["grad"][n].reshape(-1)
                    idxs = {int(g.abs().argmax()), int(torch.randint(0, g.numel(), ()))}
                    if "memory_gate" in n or ".compress." in n or (
                            "q_proj" in n and cfg_in.get("memory_type") in ("knn", "compressive")
                            and int(n.split(".")[2]) in cfg_in["memory_layers"]):
                        idxs.add(int(torch.randint(0, g.numel(), ())))  # one more
                    for idx in sorted(idxs):
                        fd = finite_difference(p64, n, idx, loss_at)
                        err = abs(fd - g[idx].item())
                        if abs(g[idx].item()) > 1e-4:
                            worst = max(worst, err / abs(g[idx].item()))
                        if os.environ.get("SELFTEST_VERBOSE"):
                            print(f"  {tag} {n}[{idx}] {g[idx].item():.6e} err {err:.2e}")
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
    n_failed = len(failures)
    selftest_memory(check)
    print(f"selftest knn/compressive pieces: {'passed' if len(failures) == n_failed else 'FAILED'}")
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
