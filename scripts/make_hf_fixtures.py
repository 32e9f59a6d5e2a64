#!/usr/bin/env python3
"""Build the Hugging Face parity fixtures in test/fixtures/hf/.

Tiny random-weight LlamaForCausalLM and Qwen2ForCausalLM models are made with
transformers (CPU, float32, fixed seeds), written as GGUF the way llama.cpp's
convert_hf_to_gguf.py lays them out, and run on a few fixed token-id sequences;
the logits of every position are stored as the reference for
test/unit/hf-parity.test.ts.

Each architecture gets two variants:
  *-f32: every tensor F32;
  *-f16: every 2-D weight F16 (norms and biases stay F32). Its reference logits
         come from the same HF model with its 2-D weights rounded to fp16 and
         back, run in float32, so only the engine's arithmetic differs.

Before finishing, the script reads every GGUF back with gguf.GGUFReader and runs
an independent numpy (float64) forward pass from the file alone, using the
engine's conventions (llama: Q/K rows permuted by the converter, RoPE on
adjacent pairs; qwen2: RoPE on halves / NEOX), and checks it against the HF
logits. That proves the file layout, not only the HF run.

Usage (needs torch, transformers, gguf, numpy):
    python3 scripts/make_hf_fixtures.py            # writes test/fixtures/hf/
    python3 scripts/make_hf_fixtures.py --check    # only re-verify existing files
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "test" / "fixtures" / "hf"

# Byte-level BPE vocabulary: the 256 GPT-2 byte symbols, a few merges, two specials.
MERGES = ["Ġ t", "h e", "i n", "e r", "o n", "Ġt he"]
SPECIALS = ["<|endoftext|>", "<|pad|>"]
N_VOCAB = 256 + len(MERGES) + len(SPECIALS)  # 264

SEQ_LENGTHS = [1, 7, 40]
TOLERANCE = 1e-3

COMMON = dict(
    vocab_size=N_VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    hidden_act="silu",
)

ARCHS = {
    "llama": dict(rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, seed=1234),
    "qwen2": dict(rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, seed=5678),
}


# ----------------------------------------------------------------------------
# tokenizer section


def gpt2_byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2's byte-level BPE uses for raw bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    table = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def vocab() -> tuple[list[str], list[int]]:
    import gguf

    tokens = gpt2_byte_symbols()
    for m in MERGES:
        tokens.append(m.replace(" ", ""))
    tokens += SPECIALS
    assert len(tokens) == N_VOCAB and len(set(tokens)) == N_VOCAB
    types = [int(gguf.TokenType.NORMAL)] * (N_VOCAB - len(SPECIALS)) + [int(gguf.TokenType.CONTROL)] * len(SPECIALS)
    return tokens, types


# ----------------------------------------------------------------------------
# model construction


def build_hf_model(arch: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    a = ARCHS[arch]
    kw = dict(COMMON)
    kw.update(rope_theta=a["rope_theta"], rms_norm_eps=a["rms_norm_eps"], tie_word_embeddings=a["tie_word_embeddings"])
    if arch == "llama":
        cfg = LlamaConfig(attention_bias=False, mlp_bias=False, **kw)
        cls = LlamaForCausalLM
    else:
        cfg = Qwen2Config(use_sliding_window=False, **kw)
        cls = Qwen2ForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(a["seed"])
    model = cls(cfg).to(torch.float32).eval()

    # Re-initialise every parameter with a fixed generator and scales chosen so
    # that logits vary by O(1) and attention is far from uniform.
    g = torch.Generator().manual_seed(a["seed"])
    E = cfg.hidden_size
    tied = cfg.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                std = 0.25 if tied else 1.0  # tied: it is also the output projection
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("lm_head.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / np.sqrt(E)))
            elif p.dim() == 2:
                fan_in = p.shape[1]
                gain = 1.5 if (name.endswith("q_proj.weight") or name.endswith("k_proj.weight")) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * (gain / np.sqrt(fan_in)))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
    return model, cfg


def round_weights_to_f16(model) -> None:
    import torch

    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(p.to(torch.float16).to(torch.float32))


def sequences(n_vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(20240601)
    return [rng.integers(0, n_vocab, size=n).astype(np.int64).tolist() for n in SEQ_LENGTHS]


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32).numpy()


# ----------------------------------------------------------------------------
# GGUF writing (the layout of llama.cpp's convert_hf_to_gguf.py)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's rotate-half order to adjacent RoPE pairs.

    HF pairs row i with row i + d/2 inside a head; llama.cpp's llama graph rotates
    rows (2i, 2i+1). The converter therefore interleaves the two halves of each
    head: new row 2i = old row i, new row 2i+1 = old row i + d/2. For K, n_head is
    the number of KV heads.
    """
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, arch: str, cfg, state: dict[str, np.ndarray], f16: bool) -> None:
    import gguf

    E = cfg.hidden_size
    n_head = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"specode-hf-parity-{arch}-{'f16' if f16 else 'f32'}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(E)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32))

    tokens, types = vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    eot = tokens.index("<|endoftext|>")
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_pad_token_id(tokens.index("<|pad|>"))
    w.add_add_bos_token(False)

    def put(name: str, t: np.ndarray) -> None:
        t = np.ascontiguousarray(t, dtype=np.float32)
        if f16 and t.ndim == 2:
            t = t.astype(np.float16)
        w.add_tensor(name, t)

    put("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        put(b + "attn_norm.weight", state[p + "input_layernorm.weight"])
        q = state[p + "self_attn.q_proj.weight"]
        k = state[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q = permute_qk(q, n_head)
            k = permute_qk(k, n_kv)
        put(b + "attn_q.weight", q)
        put(b + "attn_k.weight", k)
        put(b + "attn_v.weight", state[p + "self_attn.v_proj.weight"])
        if arch == "qwen2":  # biases are not permuted: qwen2 uses NEOX RoPE
            put(b + "attn_q.bias", state[p + "self_attn.q_proj.bias"])
            put(b + "attn_k.bias", state[p + "self_attn.k_proj.bias"])
            put(b + "attn_v.bias", state[p + "self_attn.v_proj.bias"])
        put(b + "attn_output.weight", state[p + "self_attn.o_proj.weight"])
        put(b + "ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        put(b + "ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        put(b + "ffn_up.weight", state[p + "mlp.up_proj.weight"])
        put(b + "ffn_down.weight", state[p + "mlp.down_proj.weight"])
    put("output_norm.weight", state["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        put("output.weight", state["lm_head.weight"])

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ----------------------------------------------------------------------------
# independent numpy forward pass from the GGUF file


def gguf_forward(path: Path, ids: list[int]) -> np.ndarray:
    import gguf

    r = gguf.GGUFReader(str(path))

    def field(key: str):
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return v.tolist()[0] if v.dtype != np.uint8 else bytes(v).decode()

    arch = field("general.architecture")
    E = field(f"{arch}.embedding_length")
    L = field(f"{arch}.block_count")
    H = field(f"{arch}.attention.head_count")
    HKV = field(f"{arch}.attention.head_count_kv")
    base = field(f"{arch}.rope.freq_base")
    eps = field(f"{arch}.attention.layer_norm_rms_epsilon")
    D = E // H
    neox = arch == "qwen2"
    T = {t.name: t for t in r.tensors}

    def get(name: str) -> np.ndarray | None:
        t = T.get(name)
        if t is None:
            return None
        a = np.array(t.data, dtype=np.float64)  # the reader shapes it row-major already
        ne = [int(x) for x in t.shape]  # GGUF order: ne[0] = columns
        assert a.shape == tuple(reversed(ne)), (name, a.shape, ne)
        return a

    def rms(x, wgt):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * wgt

    def rope(x, pos):  # x: [n, heads, D]
        inv = 1.0 / base ** (np.arange(0, D, 2, dtype=np.float64) / D)
        ang = pos[:, None] * inv[None, :]  # [n, D/2]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        y = x.copy()
        if neox:
            a, b = x[..., : D // 2], x[..., D // 2 :]
            y[..., : D // 2] = a * c - b * s
            y[..., D // 2 :] = a * s + b * c
        else:
            a, b = x[..., 0::2], x[..., 1::2]
            y[..., 0::2] = a * c - b * s
            y[..., 1::2] = a * s + b * c
        return y

    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    emb = get("token_embd.weight")
    x = emb[np.array(ids)]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(L):
        p = f"blk.{l}."
        h = rms(x, get(p + "attn_norm.weight"))
        q = h @ get(p + "attn_q.weight").T
        k = h @ get(p + "attn_k.weight").T
        v = h @ get(p + "attn_v.weight").T
        for nm, arr in (("q", q), ("k", k), ("v", v)):
            bias = get(p + f"attn_{nm}.bias")
            if bias is not None:
                arr += bias
        q = rope(q.reshape(n, H, D), pos)
        k = rope(k.reshape(n, HKV, D), pos)
        v = v.reshape(n, HKV, D)
        out = np.zeros((n, H, D))
        for hh in range(H):
            kh = hh // (H // HKV)
            sc = q[:, hh, :] @ k[:, kh, :].T / np.sqrt(D) + mask
            sc = np.exp(sc - sc.max(axis=1, keepdims=True))
            sc /= sc.sum(axis=1, keepdims=True)
            out[:, hh, :] = sc @ v[:, kh, :]
        x = x + out.reshape(n, H * D) @ get(p + "attn_output.weight").T
        h = rms(x, get(p + "ffn_norm.weight"))
        gt = h @ get(p + "ffn_gate.weight").T
        up = h @ get(p + "ffn_up.weight").T
        x = x + (gt / (1.0 + np.exp(-gt)) * up) @ get(p + "ffn_down.weight").T
    x = rms(x, get("output_norm.weight"))
    out_w = get("output.weight")
    if out_w is None:
        out_w = emb
    return x @ out_w.T


# ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import gguf  # noqa: F401
    import torch
    import transformers
    from importlib.metadata import version

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": version("gguf"),
    }


def generate() -> None:
    import torch

    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    seqs = sequences(N_VOCAB)
    fixtures = []
    for arch in ARCHS:
        for f16 in (False, True):
            model, cfg = build_hf_model(arch)
            if f16:
                round_weights_to_f16(model)
            name = f"{arch}-{'f16' if f16 else 'f32'}"
            state = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
            if cfg.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            gguf_path = OUT_DIR / f"{name}.gguf"
            write_gguf(gguf_path, arch, cfg, state, f16)
            rows = []
            seq_meta = []
            for ids in seqs:
                lg = hf_logits(model, ids)
                assert lg.shape == (len(ids), N_VOCAB)
                seq_meta.append({"ids": ids, "row": sum(len(s["ids"]) for s in seq_meta)})
                rows.append(lg)
            allrows = np.concatenate(rows, axis=0).astype("<f4")
            bin_path = OUT_DIR / f"{name}.logits.bin"
            allrows.tofile(bin_path)
            print(
                f"{name}: logits std {allrows.std():.3f}, range [{allrows.min():.2f}, {allrows.max():.2f}], "
                f"mean per-row spread {np.mean(allrows.max(1) - allrows.min(1)):.2f}"
            )
            fixtures.append(
                {
                    "name": name,
                    "arch": arch,
                    "weights": "F16" if f16 else "F32",
                    "gguf": gguf_path.name,
                    "logits": bin_path.name,
                    "nVocab": N_VOCAB,
                    "nLayer": cfg.num_hidden_layers,
                    "ropeTheta": float(cfg.rope_parameters["rope_theta"]),
                    "rmsEps": float(cfg.rms_norm_eps),
                    "tied": bool(cfg.tie_word_embeddings),
                    "sequences": seq_meta,
                }
            )
    manifest = {
        "description": "HF transformers reference logits for tiny random Llama/Qwen2 models; see README.md",
        "generator": "python3 scripts/make_hf_fixtures.py",
        "tolerance": TOLERANCE,
        "logitsFormat": "little-endian float32, rows of nVocab, sequences concatenated; sequence s starts at row s.row",
        "versions": versions(),
        "fixtures": fixtures,
    }
    (OUT_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def check() -> float:
    manifest = json.loads((OUT_DIR / "manifest.json").read_text())
    worst = 0.0
    for fx in manifest["fixtures"]:
        ref = np.fromfile(OUT_DIR / fx["logits"], dtype="<f4").reshape(-1, fx["nVocab"])
        err = 0.0
        for s in fx["sequences"]:
            ids = s["ids"]
            got = gguf_forward(OUT_DIR / fx["gguf"], ids)
            want = ref[s["row"] : s["row"] + len(ids)]
            err = max(err, float(np.max(np.abs(got - want))))
        print(f"numpy-from-GGUF vs HF, {fx['name']}: max |dlogit| = {err:.3g}")
        worst = max(worst, err)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only verify the existing fixtures with numpy")
    args = ap.parse_args()
    if not args.check:
        generate()
    worst = check()
    if worst > 1e-4:
        print(f"FAIL: the GGUF files do not reproduce the HF logits (max error {worst:.3g})", file=sys.stderr)
        return 1
    print("OK: GGUF layout reproduces the HF logits")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
