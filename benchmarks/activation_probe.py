#!/usr/bin/env python
"""Training activation memory probe: bytes saved for backward, per token, per layer component.

Builds tiny random-init bf16 models (Qwen3, Qwen2, Llama, Qwen3-MoE, Qwen3-Next) on CPU with
transformers' defaults (attn_implementation="sdpa", the default experts implementation, the torch
fallback of Gated DeltaNet), runs one training-mode forward (with labels) under
``torch.autograd.graph.saved_tensors_hooks`` and records every distinct storage saved for backward
(dedup by ``untyped_storage().data_ptr()``, parameters excluded, ``storage.nbytes()`` counted).
Each storage is attributed to the module that first saved it (forward pre/post hooks keep a stack of
module names). A storage saved by more than one decoder layer (RoPE cos/sin) is reported as
"shared".

For every component it then fits exact rational coefficients of
    bytes(B, s) = sum_j coef_j * feature_j(dims, B, s)
with features such as T*h, T*q, Tp*nv*dk*dv/C, B*(Kc-1)*(2kd+vd), const*E (T = B*s tokens,
Tp = B*ceil(s/C)*C chunk-padded tokens, C = GDN chunk size) over all configs and (B, s) points,
and checks the fitted formula against every measured point (residual printed).

Extra experiments: gradient checkpointing (use_reentrant False/True), output_router_logits,
eager attention and a padded batch (s^2 terms), the "live storage" cross-check (all storages
created during forward that are still alive afterwards, via a TorchDispatchMode), and the GDN
chunk size (C=64 default vs. C=32 forced).

    python benchmarks/activation_probe.py            # full run, prints tables (< 3 min on 2 cores)
    python benchmarks/activation_probe.py --md FILE  # also write the tables as markdown
    python benchmarks/activation_probe.py --cuda-check  # sdpa / grouped_mm saved tensors on CUDA (pure torch)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import re
import sys
import time
import warnings
from collections import defaultdict
from fractions import Fraction

import numpy as np
import torch

warnings.filterwarnings("ignore")

CHUNK = 64  # transformers' torch_chunk_gated_delta_rule default chunk_size
DEVICE = "cpu"
GC_COLLECT = False

# ----------------------------------------------------------------------------------------------
# configurations (dims are deliberately "incommensurate" so that the features are independent)
# ----------------------------------------------------------------------------------------------
DENSE = {
    # h, nH, nKV, hd, I, V
    "qwen3": [
        dict(h=64, nH=4, nKV=2, hd=16, I=96, V=384),
        dict(h=96, nH=6, nKV=3, hd=32, I=160, V=512),
        dict(h=128, nH=8, nKV=8, hd=16, I=200, V=640),
        dict(h=80, nH=2, nKV=1, hd=48, I=72, V=1000),
        dict(h=48, nH=12, nKV=4, hd=8, I=256, V=300),
        dict(h=112, nH=3, nKV=3, hd=24, I=136, V=448),
        dict(h=72, nH=10, nKV=2, hd=40, I=56, V=777),
    ],
    "qwen2": [
        dict(h=64, nH=4, nKV=2, hd=16, I=96, V=384),
        dict(h=96, nH=6, nKV=3, hd=32, I=160, V=512),
        dict(h=128, nH=8, nKV=8, hd=16, I=200, V=640),
        dict(h=80, nH=2, nKV=1, hd=48, I=72, V=1000),
        dict(h=48, nH=12, nKV=4, hd=8, I=256, V=300),
        dict(h=112, nH=3, nKV=3, hd=24, I=136, V=448),
        dict(h=72, nH=10, nKV=2, hd=40, I=56, V=777),
    ],
    # LlamaConfig validates h % nH == 0
    "llama": [
        dict(h=64, nH=4, nKV=2, hd=16, I=96, V=384),
        dict(h=96, nH=6, nKV=3, hd=32, I=160, V=512),
        dict(h=128, nH=8, nKV=8, hd=16, I=200, V=640),
        dict(h=80, nH=2, nKV=1, hd=48, I=72, V=1000),
        dict(h=48, nH=12, nKV=4, hd=8, I=256, V=300),
        dict(h=120, nH=3, nKV=3, hd=24, I=136, V=448),
        dict(h=70, nH=10, nKV=2, hd=40, I=56, V=777),
    ],
}
MOE = [  # Qwen3-MoE: h, nH, nKV, hd, E, k, Im, V
    dict(h=64, nH=4, nKV=2, hd=16, E=8, k=2, Im=32, V=384),
    dict(h=96, nH=6, nKV=3, hd=32, E=6, k=3, Im=24, V=512),
    dict(h=128, nH=8, nKV=4, hd=16, E=16, k=4, Im=16, V=640),
    dict(h=80, nH=2, nKV=1, hd=48, E=4, k=1, Im=40, V=1000),
    dict(h=48, nH=4, nKV=4, hd=8, E=12, k=5, Im=56, V=300),
    dict(h=112, nH=2, nKV=2, hd=24, E=10, k=2, Im=8, V=448),
    dict(h=72, nH=6, nKV=2, hd=16, E=5, k=4, Im=48, V=777),
    dict(h=56, nH=2, nKV=1, hd=32, E=20, k=3, Im=24, V=256),
]
NEXT = [  # Qwen3-Next: attention h,nH,nKV,hd ; GDN nk,nv,dk,dv,Kc ; MoE E,k,Im,Is ; V
    dict(h=64, nH=4, nKV=2, hd=32, nk=2, nv=4, dk=16, dv=16, Kc=4, E=8, k=2, Im=32, Is=48, V=384),
    dict(h=96, nH=2, nKV=1, hd=64, nk=3, nv=3, dk=32, dv=16, Kc=3, E=6, k=3, Im=24, Is=40, V=512),
    dict(h=128, nH=8, nKV=4, hd=16, nk=2, nv=8, dk=8, dv=24, Kc=5, E=16, k=4, Im=16, Is=64, V=640),
    dict(h=80, nH=4, nKV=4, hd=24, nk=4, nv=4, dk=24, dv=32, Kc=2, E=4, k=1, Im=40, Is=24, V=1000),
    dict(h=48, nH=6, nKV=2, hd=8, nk=1, nv=2, dk=40, dv=8, Kc=4, E=12, k=5, Im=56, Is=16, V=300),
    dict(h=112, nH=2, nKV=2, hd=40, nk=2, nv=6, dk=16, dv=8, Kc=6, E=10, k=2, Im=8, Is=72, V=448),
    dict(h=72, nH=3, nKV=1, hd=16, nk=3, nv=6, dk=8, dv=40, Kc=3, E=5, k=4, Im=48, Is=32, V=777),
    dict(h=56, nH=4, nKV=2, hd=48, nk=1, nv=1, dk=24, dv=48, Kc=4, E=20, k=3, Im=24, Is=8, V=256),
    dict(h=88, nH=2, nKV=1, hd=16, nk=4, nv=8, dk=8, dv=8, Kc=2, E=7, k=2, Im=64, Is=56, V=320),
]
POINTS = [(1, 64), (2, 64), (1, 128), (2, 128), (1, 100), (2, 100)]
NEXT_POINTS = POINTS + [(1, 192)]


def derived(d):
    d = dict(d)
    d["q"] = d["nH"] * d["hd"]
    d["kv"] = d["nKV"] * d["hd"]
    if "nk" in d:
        d["kd"] = d["nk"] * d["dk"]
        d["vd"] = d["nv"] * d["dv"]
        d["nvdk"] = d["nv"] * d["dk"]  # q,k after repeat_interleave to nv heads
        d["rot"] = int(d["hd"] * 0.25)
    else:
        d["rot"] = d["hd"]
    return d


def make_model(family, d, n_layers=2, experts_implementation=None, attn="sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(
        hidden_size=d["h"], num_attention_heads=d["nH"], num_key_value_heads=d["nKV"], head_dim=d["hd"],
        vocab_size=d["V"], max_position_embeddings=1024, tie_word_embeddings=False, num_hidden_layers=n_layers,
    )
    if family in ("qwen3", "qwen2", "llama"):
        cfg = AutoConfig.for_model(family, intermediate_size=d["I"], **common)
    elif family == "qwen3_moe":
        cfg = AutoConfig.for_model(
            "qwen3_moe", num_experts=d["E"], num_experts_per_tok=d["k"], moe_intermediate_size=d["Im"],
            norm_topk_prob=d.get("norm_topk_prob", True), decoder_sparse_step=1, mlp_only_layers=[],
            intermediate_size=4 * d["h"], **common)
    elif family == "qwen3_next":
        common["num_hidden_layers"] = 4
        cfg = AutoConfig.for_model(
            "qwen3_next", linear_num_key_heads=d["nk"], linear_num_value_heads=d["nv"],
            linear_key_head_dim=d["dk"], linear_value_head_dim=d["dv"], linear_conv_kernel_dim=d["Kc"],
            num_experts=d["E"], num_experts_per_tok=d["k"], moe_intermediate_size=d["Im"],
            shared_expert_intermediate_size=d["Is"], norm_topk_prob=True, decoder_sparse_step=1,
            mlp_only_layers=[], intermediate_size=4 * d["h"],
            layer_types=["linear_attention", "full_attention"] * 2, **common)
    else:
        raise ValueError(family)
    kw = dict(attn_implementation=attn, dtype=torch.bfloat16)
    if experts_implementation is not None:
        kw["experts_implementation"] = experts_implementation
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, **kw).to(DEVICE)
    model.train()
    return model


# ----------------------------------------------------------------------------------------------
# recording
# ----------------------------------------------------------------------------------------------
class LiveTracker(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every storage produced by an ATen op (weakly), tagged with the current module."""

    def __init__(self, rec):
        super().__init__()
        self.rec = rec
        self.table = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        from torch.multiprocessing.reductions import StorageWeakRef

        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                nb = st.nbytes()
                if nb == 0:
                    continue
                ptr = st.data_ptr()
                old = self.table.get(ptr)
                if old is not None and not old[0].expired():
                    continue
                self.table[ptr] = (StorageWeakRef(st), nb, self.rec.stack[-1], t.dtype, tuple(t.shape))
        return out


class Recorder:
    def __init__(self, model):
        self.model = model
        self.stack = ["<outside>"]
        self.handles = []
        for name, m in model.named_modules():
            self.handles.append(m.register_forward_pre_hook(self._pre(name)))
            self.handles.append(m.register_forward_hook(self._post(name)))
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.reset()

    def _pre(self, name):
        def hook(mod, args):
            self.stack.append(name)

        return hook

    def _post(self, name):
        def hook(mod, args, out):
            # pop up to and including `name` (robust against exceptions / re-entrancy)
            while len(self.stack) > 1:
                if self.stack.pop() == name:
                    break

        return hook

    def reset(self):
        # ptr -> [nbytes, first module, set(savers), dtype, shape, weakref]
        self.saved = {}

    def pack(self, t):
        # No strong reference is kept: a storage only counts if the autograd graph still holds it after
        # the forward (tensors saved by graph branches that die during the forward -- e.g. the unused final
        # recurrent state of the GDN fallback -- are freed and must not be counted).
        from torch.multiprocessing.reductions import StorageWeakRef

        st = t.untyped_storage()
        ptr = st.data_ptr()
        nb = st.nbytes()
        if nb == 0 or ptr in self.param_ptrs:
            return t
        mod = self.stack[-1]
        e = self.saved.get(ptr)
        if e is not None and e[5].expired():  # address reused after the first storage died
            e = None
        if e is None:
            self.saved[ptr] = [nb, mod, {mod}, t.dtype, tuple(t.shape), StorageWeakRef(st)]
        else:
            e[2].add(mod)
        return t

    def alive_saved(self):
        # refcounting frees dead graph branches immediately (autograd nodes hold no Python cycles here);
        # run the probe with --gc to gc.collect() before every check (same numbers, slower)
        if GC_COLLECT:
            gc.collect()
        return {p: e for p, e in self.saved.items() if not e[5].expired()}

    def close(self):
        for h in self.handles:
            h.remove()


_LAYER_RE = re.compile(r"^model\.layers\.(\d+)(?:\.([A-Za-z_]+))?(?:\.([A-Za-z_]+))?")


def classify(name, model):
    """module name -> (scope, component, sub) ; scope = layer index or 'model'."""
    if name in ("", "<outside>"):
        return ("model", "loss", "")
    if name.startswith("model.embed_tokens"):
        return ("model", "embeddings", "")
    if name.startswith("model.norm"):
        return ("model", "final_norm", "")
    if name.startswith("lm_head"):
        return ("model", "lm_head", "")
    m = _LAYER_RE.match(name)
    if m:
        i = int(m.group(1))
        comp = m.group(2) or "layer_residual"
        sub = m.group(3) or ""
        layer = model.model.layers[i]
        if comp == "self_attn" and type(layer.self_attn).__name__ == "Qwen3NextAttention":
            comp = "gated_attn"
        if comp == "mlp":
            cls = type(layer.mlp).__name__
            if "Sparse" in cls:
                comp = "moe"
                sub = {"gate": "router", "experts": "experts", "shared_expert": "shared_expert",
                       "shared_expert_gate": "shared_expert_gate", "": "block"}.get(sub, sub)
        return (i, comp, sub)
    return ("model", name, "")


def measure(model, B, s, *, labels=True, router_logits=False, attn_mask=None, live=False, use_cache=False):
    """One forward.  Returns (saved, live, info).  saved/live: dict key -> bytes, key = (scope, comp, sub)."""
    rec = Recorder(model)
    gen = torch.Generator().manual_seed(1234 + B * 1000 + s)
    ids = torch.randint(0, model.config.vocab_size, (B, s), generator=gen).to(DEVICE)
    kwargs = dict(input_ids=ids, use_cache=use_cache)
    if labels:
        kwargs["labels"] = ids
    if router_logits:
        kwargs["output_router_logits"] = True
    if attn_mask is not None:
        kwargs["attention_mask"] = attn_mask.to(DEVICE)
    tracker = LiveTracker(rec) if live else None
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t):
        with (tracker if tracker is not None else contextlib.nullcontext()):
            out = model(**kwargs)
    rec.close()
    saved = defaultdict(int)
    details = []
    n_all = len(rec.saved)
    rec.saved = rec.alive_saved()
    for ptr, (nb, mod, savers, dt, sh, _) in rec.saved.items():
        scopes = {classify(m, model)[0] for m in savers}
        layer_scopes = {x for x in scopes if x != "model"}
        if len(layer_scopes) > 1:
            key = ("model", "shared_across_layers", "")
        else:
            key = classify(mod, model)
            if key[1] == "loss":
                key = ("model", "loss", {torch.float32: "log_softmax" if len(sh) == 2 else "scalar",
                                         torch.int64: "labels"}.get(dt, str(dt)))
        saved[key] += nb
        details.append((key, nb, dt, sh, mod))
    out_ptrs = {}
    for k in ("loss", "logits", "aux_loss"):
        v = getattr(out, k, None)
        if isinstance(v, torch.Tensor):
            out_ptrs[v.untyped_storage().data_ptr()] = k
    rl = getattr(out, "router_logits", None)
    if rl:
        for t in rl:
            out_ptrs[t.untyped_storage().data_ptr()] = "router_logits"
    info = {"logits_dtype": out.logits.dtype, "logits_nbytes": out.logits.untyped_storage().nbytes(),
            "details": details, "out": {}, "dead_saved": n_all - len(rec.saved)}
    livebytes = defaultdict(int)
    info["live_not_saved"] = []
    info["saved_not_live"] = []
    if tracker is not None:
        gc.collect()
        alive = set()
        for ptr, (ref, nb, mod, dt, sh) in tracker.table.items():
            if ref.expired() or ptr in rec.param_ptrs:
                continue
            alive.add(ptr)
            if ptr not in rec.saved and ptr not in out_ptrs:
                info["live_not_saved"].append((nb, mod, dt, sh))
            if ptr in out_ptrs:
                info["out"][out_ptrs[ptr]] = info["out"].get(out_ptrs[ptr], 0) + nb
                continue
            key = classify(mod, model)
            if key[1] == "loss":
                key = ("model", "loss", "")
            livebytes[key] += nb
        for ptr, (nb, mod, savers, dt, sh, _) in rec.saved.items():
            if ptr not in alive:
                info["saved_not_live"].append((nb, mod, dt, sh))
    del out, rec, tracker
    return dict(saved), dict(livebytes), info


def per_layer(saved, model):
    """Collapse per-layer keys to component keys; check all layers of a kind agree."""
    comps = defaultdict(dict)  # (comp, sub) -> {layer: bytes}
    glob = {}
    for (scope, comp, sub), nb in saved.items():
        if scope == "model":
            glob[(comp, sub)] = nb
        else:
            comps[(comp, sub)][scope] = nb
    res = {}
    mismatch = []
    for key, by_layer in comps.items():
        vals = set(by_layer.values())
        if len(vals) > 1:
            mismatch.append((key, by_layer))
        res[key] = max(vals)
    return res, glob, mismatch


# ----------------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------------
def rationalize(x, maxden=256):
    return Fraction(x).limit_denominator(maxden)


def fit(rows, feats):
    """rows: list of (vars dict, measured bytes). feats: list of (name, fn(vars)->number).
    Least squares -> rational coefficients -> exact residual at every row."""
    X = np.array([[float(f(v)) for _, f in feats] for v, _ in rows], dtype=np.float64)
    y = np.array([float(m) for _, m in rows], dtype=np.float64)
    scale = np.maximum(np.abs(X).max(axis=0), 1.0)
    coef, *_ = np.linalg.lstsq(X / scale, y, rcond=None)
    coef = coef / scale
    rank = np.linalg.matrix_rank(X / scale)
    fr = [rationalize(c) for c in coef]
    resid = []
    for v, m in rows:
        pred = sum(c * Fraction(f(v)) for c, (_, f) in zip(fr, feats))
        resid.append(m - pred)
    return fr, resid, rank


def fmt_formula(feats, fr):
    parts = []
    for (n, _), c in zip(feats, fr):
        if c == 0:
            continue
        cs = str(c) if c.denominator == 1 else f"({c})"
        if n == "1":
            parts.append(cs)
        elif c == 1:
            parts.append(n)
        else:
            parts.append(f"{cs}*{n}")
    s = " + ".join(parts) if parts else "0"
    return s.replace("+ -", "- ")


def V(d, B, s, C=CHUNK):
    v = derived(d)
    v.update(B=B, s=s, T=B * s, C=C, Sp=math.ceil(s / C) * C)
    v["Tp"] = B * v["Sp"]
    return v


# feature sets -------------------------------------------------------------------------------
def F(name, fn):
    return (name, fn)


FEATS = {
    "rmsnorm": [F("T*h", lambda v: v["T"] * v["h"]), F("T", lambda v: v["T"]),
                F("h", lambda v: v["h"]), F("1", lambda v: 1)],
    "self_attn": [F("T*h", lambda v: v["T"] * v["h"]), F("T*q", lambda v: v["T"] * v["q"]),
                  F("T*kv", lambda v: v["T"] * v["kv"]), F("T*nH", lambda v: v["T"] * v["nH"]),
                  F("T*nKV", lambda v: v["T"] * v["nKV"]), F("T", lambda v: v["T"]),
                  F("B*s^2*nH", lambda v: v["B"] * v["s"] ** 2 * v["nH"]), F("1", lambda v: 1)],
    "gated_attn": [F("T*h", lambda v: v["T"] * v["h"]), F("T*q", lambda v: v["T"] * v["q"]),
                   F("T*kv", lambda v: v["T"] * v["kv"]), F("T*nH", lambda v: v["T"] * v["nH"]),
                   F("T*nKV", lambda v: v["T"] * v["nKV"]), F("T", lambda v: v["T"]),
                   F("hd", lambda v: v["hd"]), F("1", lambda v: 1)],
    "mlp": [F("T*h", lambda v: v["T"] * v["h"]), F("T*I", lambda v: v["T"] * v["I"]), F("T", lambda v: v["T"]),
            F("1", lambda v: 1)],
    "moe": [F("T*h", lambda v: v["T"] * v["h"]), F("T*k*h", lambda v: v["T"] * v["k"] * v["h"]),
            F("T*k*Im", lambda v: v["T"] * v["k"] * v["Im"]), F("T*k", lambda v: v["T"] * v["k"]),
            F("T*E", lambda v: v["T"] * v["E"]), F("T*Is", lambda v: v["T"] * v.get("Is", 0)),
            F("T", lambda v: v["T"]), F("E", lambda v: v["E"]), F("1", lambda v: 1)],
    "linear_attn": [
        F("T*h", lambda v: v["T"] * v["h"]), F("T*kd", lambda v: v["T"] * v["kd"]),
        F("T*vd", lambda v: v["T"] * v["vd"]), F("T*nv*dk", lambda v: v["T"] * v["nvdk"]),
        F("T*nk", lambda v: v["T"] * v["nk"]), F("T*nv", lambda v: v["T"] * v["nv"]),
        F("Tp*nv*dk", lambda v: v["Tp"] * v["nvdk"]), F("Tp*vd", lambda v: v["Tp"] * v["vd"]),
        F("Tp*nv", lambda v: v["Tp"] * v["nv"]), F("Tp*nv*C", lambda v: v["Tp"] * v["nv"] * v["C"]),
        F("Tp*nv*dk*dv/C", lambda v: Fraction(v["Tp"] * v["nv"] * v["dk"] * v["dv"], v["C"])),
        F("Tp*nv/C", lambda v: Fraction(v["Tp"] * v["nv"], v["C"])),
        F("[Sp>C]*Tp*nv*dk", lambda v: v["Tp"] * v["nvdk"] * (v["Sp"] > v["C"])),
        F("B*(Kc-1)*(2kd+vd)", lambda v: v["B"] * (v["Kc"] - 1) * (2 * v["kd"] + v["vd"])),
        F("nv", lambda v: v["nv"]), F("C^2", lambda v: v["C"] ** 2), F("1", lambda v: 1)],
    "embeddings": [F("T", lambda v: v["T"]), F("1", lambda v: 1)],
    "lm_head": [F("T*h", lambda v: v["T"] * v["h"]), F("T", lambda v: v["T"]), F("1", lambda v: 1)],
    "log_softmax": [F("T*V", lambda v: v["T"] * v["V"]), F("T", lambda v: v["T"]), F("1", lambda v: 1)],
    "shared_rotary": [F("s*rot", lambda v: v["s"] * v["rot"]), F("T*rot", lambda v: v["T"] * v["rot"]),
                      F("T", lambda v: v["T"]), F("s", lambda v: v["s"]), F("1", lambda v: 1)],
}
MOE_SUB = {  # sub-breakdown of the MoE block
    "router": [F("T*E", lambda v: v["T"] * v["E"]), F("T*k", lambda v: v["T"] * v["k"]), F("T*h", lambda v: v["T"] * v["h"]),
               F("T", lambda v: v["T"]), F("1", lambda v: 1)],
    "experts": [F("T*k*h", lambda v: v["T"] * v["k"] * v["h"]), F("T*k*Im", lambda v: v["T"] * v["k"] * v["Im"]),
                F("T*k", lambda v: v["T"] * v["k"]), F("E", lambda v: v["E"]), F("T*h", lambda v: v["T"] * v["h"]),
                F("1", lambda v: 1)],
    "shared_expert": [F("T*h", lambda v: v["T"] * v["h"]), F("T*Is", lambda v: v["T"] * v.get("Is", 0)),
                      F("1", lambda v: 1)],
    "shared_expert_gate": [F("T*h", lambda v: v["T"] * v["h"]), F("T", lambda v: v["T"]), F("1", lambda v: 1)],
    "block": [F("T*h", lambda v: v["T"] * v["h"]), F("T", lambda v: v["T"]), F("1", lambda v: 1)],
}


# ----------------------------------------------------------------------------------------------
# experiments
# ----------------------------------------------------------------------------------------------
class GDNChunk:
    """Context manager forcing the chunk size of the torch Gated-DeltaNet fallback."""

    def __init__(self, C):
        self.C = C

    def __enter__(self):
        import functools

        from transformers.models.qwen3_next import modeling_qwen3_next as mq

        self.mq = mq
        self.orig = mq.torch_chunk_gated_delta_rule
        if self.C != CHUNK:
            mq.torch_chunk_gated_delta_rule = functools.partial(self.orig, chunk_size=self.C)
        return self

    def __exit__(self, *a):
        self.mq.torch_chunk_gated_delta_rule = self.orig


def collect(family, configs, points, log, chunk=CHUNK):
    """Returns rows[component_key] = list of (vars, bytes)."""
    rows = defaultdict(list)
    for ci, d in enumerate(configs):
        model = make_model(family, d)
        for B, s in points:
            with GDNChunk(chunk) if family == "qwen3_next" else contextlib.nullcontext():
                saved, _, info = measure(model, B, s)
            comps, glob, mism = per_layer(saved, model)
            if mism:
                log(f"  !! {family} cfg{ci} B={B} s={s}: layers disagree: {mism}")
            v = V(d, B, s, chunk)
            v["_cfg"] = f"{family}#{ci}"
            tot = defaultdict(int)
            for (comp, sub), nb in comps.items():
                tot[comp] += nb
                if comp == "moe":
                    rows[(comp, sub)].append((v, nb))
            for comp, nb in tot.items():
                rows[(comp, "*")].append((v, nb))
            for (comp, sub), nb in glob.items():
                rows[(comp, sub)].append((v, nb))
            rows[("_logits_output_bytes", "")].append((v, info["logits_nbytes"]))
        del model
    return rows


def feature_set(comp, sub):
    if comp in ("input_layernorm", "post_attention_layernorm", "final_norm"):
        return FEATS["rmsnorm"]
    if comp == "moe" and sub != "*":
        return MOE_SUB.get(sub)
    if comp == "loss":
        return {"log_softmax": FEATS["log_softmax"], "labels": [F("T", lambda v: v["T"]), F("[B==1]", lambda v: int(v["B"] == 1))],
                "scalar": [F("1", lambda v: 1)]}.get(sub)
    if comp == "shared_across_layers":
        return FEATS["shared_rotary"]
    if comp == "_logits_output_bytes":
        return FEATS["log_softmax"]
    if comp == "layer_residual":
        return FEATS["embeddings"]
    if comp == "moe" and sub == "*":
        return FEATS["moe"]
    return FEATS.get(comp)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", help="write markdown tables to this file")
    ap.add_argument("--quick", action="store_true", help="fewer configs (smoke test)")
    ap.add_argument("--cuda-check", action="store_true", help="only run the CUDA sdpa/grouped_mm check")
    ap.add_argument("--device", default="cpu", help="run the whole probe on this device (default cpu)")
    ap.add_argument("--gc", action="store_true", help="gc.collect() before counting (slower; same result)")
    args = ap.parse_args()
    global DEVICE, GC_COLLECT
    DEVICE = args.device
    GC_COLLECT = args.gc
    if args.cuda_check:
        return cuda_check()

    import transformers

    t0 = time.time()
    lines = []

    def log(x=""):
        print(x, flush=True)
        lines.append(x)

    dev = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "CPU"
    log(f"# activation probe  torch {torch.__version__}  transformers {transformers.__version__}  "
        f"device {DEVICE} ({dev})  threads {torch.get_num_threads()}  python {sys.version.split()[0]}")
    env = environment_facts()
    for k, v in env.items():
        log(f"- {k}: {v}")

    sets = [("qwen3", DENSE["qwen3"], POINTS), ("qwen2", DENSE["qwen2"], POINTS), ("llama", DENSE["llama"], POINTS),
            ("qwen3_moe", MOE, POINTS), ("qwen3_next", NEXT, NEXT_POINTS)]
    if args.quick:
        sets = [(f, c[:3], p[:4]) for f, c, p in sets]
    allrows = {}
    for fam, cfgs, pts in sets:
        t1 = time.time()
        allrows[fam] = collect(fam, cfgs, pts, log)
        log(f"- measured {fam}: {len(cfgs)} configs x {len(pts)} (B,s) points in {time.time() - t1:.1f} s")
    # GDN chunk-size variants (C=32, C=16) merged into the linear_attn rows
    t1 = time.time()
    allrows["qwen3_next_Cvar"] = defaultdict(list)
    for C in (32, 16):
        rows_c = collect("qwen3_next", NEXT[:4] if args.quick else NEXT[:6], [(1, 64), (2, 100)], log, chunk=C)
        for k, v in rows_c.items():
            allrows["qwen3_next_Cvar"][k].extend(v)
    log(f"- measured qwen3_next with GDN chunk_size=32 and 16: {time.time() - t1:.1f} s")

    # ------------------------------------------------------------------ fits
    log("")
    log("## Fitted formulas (bytes per forward; T=B*s tokens; divide the T-terms by T for bytes/token)")
    log("")
    log("| family | component | formula (bytes) | rank/feats | rows | max abs residual (B) |")
    log("|---|---|---|---|---|---|")
    fits = {}
    order = ["embeddings", "input_layernorm", "self_attn", "gated_attn", "linear_attn", "post_attention_layernorm",
             "mlp", "moe", "layer_residual", "shared_across_layers", "final_norm", "lm_head", "loss", "_logits_output_bytes"]
    for fam in ["qwen3", "qwen2", "llama", "qwen3_moe", "qwen3_next"]:
        rows = allrows[fam]
        if fam == "qwen3_next":
            rows = {k: list(v) for k, v in rows.items()}
            for k, v in allrows["qwen3_next_Cvar"].items():
                if k[0] == "linear_attn":
                    rows.setdefault(k, []).extend(v)
        keys = sorted(rows, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1] not in ("*",), k[1]))
        for comp, sub in keys:
            feats = feature_set(comp, sub)
            if feats is None:
                log(f"| {fam} | {comp}/{sub} | (no feature set) | | {len(rows[(comp, sub)])} | |")
                continue
            fr, resid, rank = fit(rows[(comp, sub)], feats)
            mx = max(abs(r) for r in resid)
            label = comp if sub in ("", "*") else f"{comp}/{sub}"
            fits[(fam, label)] = (feats, fr, resid, rank)
            log(f"| {fam} | {label} | {fmt_formula(feats, fr)} | {rank}/{len(feats)} | {len(resid)} | {float(mx):g} |")

    # ------------------------------------------------------------------ data points (per token)
    log("")
    log("## Data points: bytes per token (= bytes / (B*s)) per component, layer value (all layers of a kind agree)")
    for fam in ["qwen3", "qwen2", "llama", "qwen3_moe", "qwen3_next"]:
        rows = allrows[fam]
        comps = [k for k in [("embeddings", ""), ("input_layernorm", "*"), ("self_attn", "*"), ("gated_attn", "*"),
                             ("linear_attn", "*"), ("post_attention_layernorm", "*"), ("mlp", "*"), ("moe", "*"),
                             ("shared_across_layers", ""), ("final_norm", ""), ("lm_head", ""), ("loss", "log_softmax"),
                             ("loss", "labels"), ("_logits_output_bytes", "")] if k in rows]
        log("")
        log(f"### {fam}")
        log("")
        log("| cfg | dims | B | s | " + " | ".join(c if s in ("", "*") else f"{c}/{s}" for c, s in comps) + " |")
        log("|---|---|---|---|" + "---|" * len(comps))
        n = len(rows[comps[0]])
        for i in range(n):
            v = rows[comps[0]][i][0]
            dims = ",".join(f"{k}={v[k]}" for k in ("h", "nH", "nKV", "hd", "I", "E", "k", "Im", "Is", "nk", "nv", "dk",
                                                      "dv", "Kc", "V") if k in v)
            vals = []
            for c in comps:
                r = rows[c][i]
                assert r[0] is v or r[0]["_cfg"] == v["_cfg"]
                vals.append(f"{r[1] / v['T']:.10g}")
            log(f"| {v['_cfg']} | {dims} | {v['B']} | {v['s']} | " + " | ".join(vals) + " |")

    # ------------------------------------------------------------------ extra experiments
    extras(log)
    log("")
    log(f"total wall time {time.time() - t0:.1f} s")
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")


def environment_facts():
    from transformers.integrations import moe as hfmoe

    out = {}
    m = make_model("qwen3_moe", MOE[0])
    out["default experts implementation (Qwen3-MoE, config._experts_implementation)"] = m.config._experts_implementation
    w = m.model.layers[0].mlp.experts.gate_up_proj
    x = torch.zeros(4, w.shape[-1], dtype=torch.bfloat16, device=DEVICE)
    offs = torch.tensor([4] * w.shape[0], dtype=torch.int32, device=DEVICE)
    out["grouped_mm path on this device (_can_use_grouped_mm)"] = (
        "native torch.nn.functional.grouped_mm" if hfmoe._can_use_grouped_mm(x, w, offs) else "python fallback loop")
    out["attn implementation"] = m.config._attn_implementation
    n = make_model("qwen3_next", NEXT[0])
    out["Qwen3-Next experts implementation"] = n.config._experts_implementation
    try:
        import fla  # noqa: F401

        out["flash-linear-attention"] = "installed"
    except ImportError:
        out["flash-linear-attention"] = "not installed -> torch_chunk_gated_delta_rule fallback (chunk 64)"
    try:
        import causal_conv1d  # noqa: F401

        out["causal_conv1d"] = "installed"
    except ImportError:
        out["causal_conv1d"] = "not installed -> F.conv1d fallback"
    # what does CPU sdpa save?
    q = torch.randn(1, 4, 64, 16, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 2, 64, 16, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    vv = torch.randn(1, 2, 64, 16, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    got = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (got.append((t.dtype, tuple(t.shape))), t)[1], lambda t: t):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, vv, is_causal=True, enable_gqa=True)
    out["sdpa (causal, enable_gqa) grad_fn / saved"] = f"{type(o.grad_fn).__name__}: {got}"
    del m, n
    return out


def extras(log):
    log("")
    log("## Extra experiments (bytes per token, one layer unless stated)")
    d = DENSE["qwen3"][0]
    md = DENSE["qwen3"][1]

    # live-storage cross-check, no checkpointing
    log("")
    log("### Live storages after forward vs. saved tensors (TorchDispatchMode cross-check)")
    log("")
    log("| model | B,s | saved total B/tok | live total B/tok (excl. returned loss/logits) | live but not saved | saved but not created in forward |")
    log("|---|---|---|---|---|---|")
    for fam, dd in (("qwen3", md), ("qwen3_moe", MOE[1]), ("qwen3_next", NEXT[0])):
        model = make_model(fam, dd)
        for uc, (B, s) in ((False, (2, 64)), (True, (2, 64)), (False, (2, 128)), (True, (2, 128))):
            saved, live, info = measure(model, B, s, live=True, use_cache=uc)
            tot_s, tot_l = sum(saved.values()), sum(live.values())
            lns = "; ".join(f"{nb / (B * s):g} {m or 'top'} {str(dt)[6:]}{list(sh)}" for nb, m, dt, sh in info["live_not_saved"]) or "-"
            snl = "; ".join(f"{nb / (B * s):g} {m or 'top'} {str(dt)[6:]}{list(sh)}" for nb, m, dt, sh in info["saved_not_live"]) or "-"
            log(f"| {fam} use_cache={uc} | {B},{s} | {tot_s / (B * s):.6g} | {tot_l / (B * s):.6g} | {lns} | {snl} |")
        del model

    # gradient checkpointing
    log("")
    log("### Gradient checkpointing (model.gradient_checkpointing_enable), live storages after forward")
    log("")
    log("| model | mode | B,s | per decoder layer kept (B/tok) | embeddings | final_norm+lm_head | loss | other | total saved-hooks | total live |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    for fam, dd in (("qwen3", md), ("qwen3_moe", MOE[1]), ("qwen3_next", NEXT[0])):
        for mode in (None, False, True):
            model = make_model(fam, dd)
            if mode is not None:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": mode})
            for B, s in ((1, 64), (2, 128)):
                T = B * s
                saved, live, info = measure(model, B, s, live=True)
                per_layer_live = defaultdict(int)
                other = 0
                for (scope, comp, sub), nb in live.items():
                    if scope != "model":
                        per_layer_live[scope] += nb
                    elif comp not in ("embeddings", "final_norm", "lm_head", "loss"):
                        other += nb
                lay = ", ".join(f"L{i}:{per_layer_live[i] / T:.6g}" for i in sorted(per_layer_live))
                g = lambda c: sum(nb for (sc, cc, _), nb in live.items() if sc == "model" and cc in c) / T
                name = "off" if mode is None else f"use_reentrant={mode}"
                log(f"| {fam} | {name} | {B},{s} | {lay} | {g(('embeddings',)):.6g} | {g(('final_norm', 'lm_head')):.6g} | "
                    f"{g(('loss',)):.6g} | {other / T:.6g} | {sum(saved.values()) / T:.6g} | {sum(live.values()) / T:.6g} |")
            del model

    # router logits
    log("")
    log("### output_router_logits=True (aux loss) vs. off")
    log("")
    log("| model | E | k | layers | B,s | saved delta B/tok | (delta - 4E/T) / L = 2E+8k ? | live delta B/tok (excl. outputs) | router_logits output B/tok (=2EL?) |")
    log("|---|---|---|---|---|---|---|---|---|")
    for fam, dd in (("qwen3_moe", MOE[0]), ("qwen3_moe", MOE[1]), ("qwen3_moe", MOE[4]), ("qwen3_next", NEXT[1]),
                    ("qwen3_next", NEXT[2])):
        model = make_model(fam, dd)
        L = model.config.num_hidden_layers
        for B, s in ((1, 64), (2, 64)):
            T = B * s
            s0, l0, _ = measure(model, B, s, live=True)
            s1, l1, i1 = measure(model, B, s, router_logits=True, live=True)
            ds = sum(s1.values()) - sum(s0.values())
            dl = sum(l1.values()) - sum(l0.values())
            log(f"| {fam} | {dd['E']} | {dd['k']} | {L} | {B},{s} | {ds / T:.6g} | {(ds - 4 * dd['E']) / T / L:.6g} "
                f"(2E+8k={2 * dd['E'] + 8 * dd['k']}) | {dl / T:.6g} | {i1['out'].get('router_logits', 0) / T:.6g} |")
        del model

    # eager attention + padding: s^2 terms
    log("")
    log("### s^2 terms: eager attention and padded batches (self_attn bytes, fit a*T + c*B*s^2)")
    log("")
    log("| model | variant | a (B/tok) | c (B per s^2 per seq) | c / nH | e (const B) | check at (2,96) residual |")
    log("|---|---|---|---|---|---|---|")
    for fam, dd in (("qwen3", d), ("qwen3", md), ("qwen3_next", NEXT[0])):
        for variant in ("sdpa", "eager", "sdpa+padding"):
            model = make_model(fam, dd, attn="eager" if variant == "eager" else "sdpa")
            comps_wanted = ("gated_attn",) if fam == "qwen3_next" else ("self_attn",)
            pts = [(2, 64), (2, 128), (1, 64), (2, 96)]
            vals = defaultdict(list)
            for B, s in pts:
                mask = None
                if variant == "sdpa+padding":
                    mask = torch.ones(B, s, dtype=torch.long)
                    mask[0, : s // 4] = 0  # left padding of the first sequence
                saved, _, _ = measure(model, B, s, attn_mask=mask)
                comps, _, _ = per_layer(saved, model)
                for comp in comps_wanted:
                    vals[comp].append(sum(nb for (c, sub), nb in comps.items() if c == comp))
            for comp in comps_wanted:
                # solve a*T + c*B*s^2 + e on the first three points, check the fourth
                A = np.array([[B * s, B * s ** 2, 1] for B, s in pts[:3]], dtype=float)
                a, c, e = (rationalize(x) for x in np.linalg.solve(A, np.array(vals[comp][:3], dtype=float)))
                B3, s3 = pts[3]
                res = vals[comp][3] - (a * B3 * s3 + c * B3 * s3 ** 2 + e)
                log(f"| {fam} {dd['h']}/{dd['nH']}/{dd['nKV']}/{dd['hd']} {comp} | {variant} | {a} | {c} | "
                    f"{c / dd['nH']} | {e} | {float(res):g} |")
            del model

    # padding in the GDN layers (apply_mask_to_padding_states)
    log("")
    log("### Padded batch in Qwen3-Next: per-layer components with vs. without attention_mask (B=2, s=128, 32 pad tokens)")
    log("")
    log("| component | no mask B/tok | with mask B/tok | delta B/tok |")
    log("|---|---|---|---|")
    model = make_model("qwen3_next", NEXT[0])
    B, s = 2, 128
    mask = torch.ones(B, s, dtype=torch.long)
    mask[0, :32] = 0
    c0, _, _ = per_layer(measure(model, B, s)[0], model)
    c1, _, _ = per_layer(measure(model, B, s, attn_mask=mask)[0], model)
    tot0, tot1 = defaultdict(int), defaultdict(int)
    for (c, sub), nb in c0.items():
        tot0[c] += nb
    for (c, sub), nb in c1.items():
        tot1[c] += nb
    for c in sorted(set(tot0) | set(tot1)):
        log(f"| {c} | {tot0[c] / (B * s):g} | {tot1[c] / (B * s):g} | {(tot1[c] - tot0[c]) / (B * s):g} |")
    del model

    # eager experts (routing dependent)
    log("")
    log("### MoE experts implementation: grouped_mm (default) vs eager loop (experts sub-module, B/tok)")
    log("")
    log("| model | impl | B,s | experts B/tok | router B/tok |")
    log("|---|---|---|---|---|")
    for impl, ntp in (("grouped_mm", True), ("eager", True), ("grouped_mm", False)):
        model = make_model("qwen3_moe", dict(MOE[0], norm_topk_prob=ntp), experts_implementation=impl)
        for B, s in ((1, 64), (2, 128)):
            saved, _, _ = measure(model, B, s)
            comps, _, _ = per_layer(saved, model)
            log(f"| qwen3_moe cfg0 norm_topk_prob={ntp} | {impl} | {B},{s} | {comps.get(('moe', 'experts'), 0) / (B * s):.6g} | "
                f"{comps.get(('moe', 'router'), 0) / (B * s):.6g} |")
        del model


# ----------------------------------------------------------------------------------------------
# CUDA check (pure torch, no transformers needed)
# ----------------------------------------------------------------------------------------------
def cuda_check():
    assert torch.cuda.is_available(), "no CUDA"
    print(f"torch {torch.__version__}  {torch.cuda.get_device_name()}  cap {torch.cuda.get_device_capability()}")
    dev = "cuda"
    F_ = torch.nn.functional
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def probe(fn, label):
        got = []

        def pack(t):
            got.append((str(t.dtype).replace("torch.", ""), tuple(t.shape), t.untyped_storage().nbytes()))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            try:
                o = fn()
                print(f"{label:55s} grad_fn={type(o.grad_fn).__name__}")
                for g in got:
                    print(f"      saved {g}")
            except Exception as e:  # noqa: BLE001
                print(f"{label:55s} FAILED {type(e).__name__}: {str(e)[:120]}")

    for B, nH, nKV, s, hd in ((2, 8, 2, 1000, 128), (1, 16, 2, 4096, 256)):
        q = torch.randn(B, nH, s, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, nKV, s, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, nKV, s, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
        kr = k.repeat_interleave(nH // nKV, 1).detach().requires_grad_()
        vr = v.repeat_interleave(nH // nKV, 1).detach().requires_grad_()
        mask = torch.ones(B, 1, s, s, device=dev, dtype=torch.bool).tril()
        print(f"--- B={B} nH={nH} nKV={nKV} s={s} hd={hd}")
        probe(lambda: F_.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
              "default backend, causal, enable_gqa (HF no-mask path)")
        probe(lambda: F_.scaled_dot_product_attention(q, kr, vr, attn_mask=mask),
              "default backend, bool mask, repeated kv (HF padded path)")
        for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            with sdpa_kernel([be]):
                probe(lambda: F_.scaled_dot_product_attention(q, kr, vr, is_causal=True), f"{be.name} causal (MHA)")
                probe(lambda: F_.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                      f"{be.name} causal enable_gqa")
    # grouped_mm
    if hasattr(F_, "grouped_mm"):
        E, h, Im, S = 8, 256, 128, 512
        x = torch.randn(S, h, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(E, h, 2 * Im, device=dev, dtype=torch.bfloat16, requires_grad=True)
        offs = torch.arange(1, E + 1, device=dev, dtype=torch.int32) * (S // E)
        probe(lambda: F_.grouped_mm(x, w, offs=offs), "F.grouped_mm (bf16)")
    # rms norm pieces and silu to confirm same saved set as CPU
    x = torch.randn(4, 64, 256, device=dev, dtype=torch.bfloat16, requires_grad=True)
    wn = torch.ones(256, device=dev, dtype=torch.bfloat16, requires_grad=True)

    def rms():
        hs = x.to(torch.float32)
        hs = hs * torch.rsqrt(hs.pow(2).mean(-1, keepdim=True) + 1e-6)
        return wn * hs.to(torch.bfloat16)

    probe(rms, "Qwen3 RMSNorm (eager ops)")
    logits = torch.randn(512, 1000, device=dev, dtype=torch.bfloat16, requires_grad=True)
    tgt = torch.randint(0, 1000, (512,), device=dev)
    probe(lambda: F_.cross_entropy(logits.float(), tgt), "cross_entropy(logits.float())")


if __name__ == "__main__":
    main()
