#!/usr/bin/env python3
"""Writes the GGUF goldens of peft.cpp's tests into tests/data/gguf/ (not part of CI).

Needs: numpy, gguf (gguf-py), torch, transformers, peft==0.21.0, safetensors, and llama.cpp built by
scripts/build_llama_cpp.sh (its folder of programs is --llama-bin).

  types.gguf                one [4, 512] tensor per type: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
                            Q8_0 (quantized by gguf-py from random normals), Q4_K, Q5_K, Q6_K (random
                            valid blocks: gguf-py cannot quantize k-quants)
  types_dequant.safetensors the same tensors dequantized to float32 by gguf-py; the generator checks
                            that llama.cpp's own to_float (peft-ggml-dequant) gives the same bits
  tiny_llama.q8_0.gguf      a random 2-layer LlamaForCausalLM (hidden 256, 4 heads / 2 KV heads,
                            vocab 256 byte tokens) written as convert_hf_to_gguf.py writes llama (Q/K
                            rows permuted); its float weights are exactly Q8_0-representable, so the
                            transformers model below and the dequantized file are the same model
  tiny_llama.q4_k_m.gguf    the same model through llama-quantize Q4_K_M (Q4_K, Q6_K, ... tensors)
  tiny_qwen2.q8_0.gguf      a random 2-layer Qwen2ForCausalLM (q/k/v biases, no permutation)
  tiny_lora/                a PEFT 0.21 LoRA adapter (r=4, all linear layers, non-zero B) for the
                            tiny llama, saved by save_pretrained
  tiny_models.json          ids, and for each file llama.cpp's greedy continuation (KV cache in
                            float32) of the quantized file and of its float32 version
  tiny_models.safetensors   the logits [ids, vocab]: llama.cpp's of each quantized file
                            ("<arch>.<file>") and of its float32 version ("<arch>.f32"),
                            transformers' ("<arch>.transformers") and, for llama, PEFT's with the
                            adapter ("llama.peft_lora")
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants
from safetensors.numpy import save_file

N_IDS = 24
GREEDY = 12


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def random_kquant_blocks(rng, qtype, rows, cols):
    """Random bytes for k-quant blocks with small, finite f16 scales (valid blocks)."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    nblk = rows * cols // block_elems
    raw = rng.integers(0, 256, size=(nblk, block_bytes), dtype=np.uint8)
    def f16(lo, hi):
        return rng.uniform(lo, hi, size=nblk).astype(np.float16).view(np.uint8).reshape(nblk, 2)
    if qtype in (T.Q4_K, T.Q5_K):  # d, dmin first
        raw[:, 0:2] = f16(0.001, 0.02)
        raw[:, 2:4] = f16(0.001, 0.02)
    elif qtype == T.Q6_K:  # d last
        raw[:, block_bytes - 2:] = f16(0.001, 0.02)
    return raw.reshape(rows, cols // block_elems * block_bytes)


def write_types(out_dir, llama_bin, rng):
    path = os.path.join(out_dir, "types.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    rows, cols = 4, 512
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    w.add_tensor("t.f32", x)
    w.add_tensor("t.f16", x.astype(np.float16))
    w.add_tensor("t.bf16", quants.quantize(x, T.BF16), raw_dtype=T.BF16)
    for name, qt in [("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1), ("q8_0", T.Q8_0)]:
        w.add_tensor("t." + name, quants.quantize(x, qt), raw_dtype=qt)
    for name, qt in [("q4_k", T.Q4_K), ("q5_k", T.Q5_K), ("q6_k", T.Q6_K)]:
        w.add_tensor("t." + name, random_kquant_blocks(rng, qt, rows, cols), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = gguf.GGUFReader(path)
    deq = {}
    with tempfile.TemporaryDirectory() as tmp:
        run([os.path.join(llama_bin, "peft-ggml-dequant"), path, tmp])
        for t in reader.tensors:
            ours = quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(rows, cols)
            ggml = np.fromfile(os.path.join(tmp, t.name + ".f32"), dtype=np.float32).reshape(rows, cols)
            if not np.array_equal(ours.view(np.uint32), ggml.view(np.uint32)):
                sys.exit(f"{t.name}: gguf-py and llama.cpp dequantize differently")
            deq[t.name] = ours
    save_file(deq, os.path.join(out_dir, "types_dequant.safetensors"))
    print(f"types.gguf: {len(deq)} tensors, gguf-py == llama.cpp bit for bit")


def q8_0_representable(t):
    """The tensor rounded through Q8_0 (rows of 32-value blocks): what the Q8_0 file stores."""
    a = t.detach().float().numpy()
    q = quants.quantize(a, T.Q8_0)
    return torch.from_numpy(quants.dequantize(q, T.Q8_0).astype(np.float32).reshape(a.shape))


def llama_permute(w, n_head, n_head_kv):
    # convert_hf_to_gguf.py (conversion/llama.py) LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_model_gguf(path, model, cfg, arch, qtype):
    """The GGUF file convert_hf_to_gguf.py writes for this model (tensor names, Q/K permutation for
    llama, metadata), with 2-D weights in `qtype` and norms in F32."""
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_name("peft.cpp tiny " + arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(qtype) if qtype != T.F32 else 0)
    # byte-level vocabulary: the 256 GPT-2 byte characters, no merges
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_char = dict(zip(bs, cs))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([chr(byte_char[b]) for b in range(256)])
    w.add_token_types([1] * 256)
    w.add_token_merges([chr(0x120) + " " + chr(0x120)])  # llama.cpp needs the key; one merge (its result is not a token)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get(k)
        if name is None:
            parts = k.split(".")  # model.layers.N.<module path>.<weight|bias>
            name = f"blk.{parts[2]}.{per_layer['.'.join(parts[3:-1])]}.{parts[-1]}"
        a = v.detach().float().numpy()
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            heads = cfg.num_attention_heads
            a = llama_permute(a, heads, heads if ".attn_q." in name else cfg.num_key_value_heads)
        if a.ndim == 2 and qtype != T.F32 and name != "output_norm.weight":
            w.add_tensor(name, quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp(llama_bin, path, ids, tmp):
    ids_file = os.path.join(tmp, "ids.txt")
    with open(ids_file, "w") as f:
        f.write(" ".join(map(str, ids)))
    out = os.path.join(tmp, "logits.f32")
    env = dict(os.environ, PEFT_GREEDY=str(GREEDY))
    r = run([os.path.join(llama_bin, "peft-llama-logits"), path, ids_file, out, "1", "f32kv"], env=env)
    logits = np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)
    greedy = [int(t) for t in r.stdout.split()]
    return logits, greedy


def build_models(rng):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    llama_cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                            bos_token_id=1, eos_token_id=2)
    qwen_cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
                           bos_token_id=1, eos_token_id=2)
    models = {}
    for name, cls, cfg in [("llama", LlamaForCausalLM, llama_cfg), ("qwen2", Qwen2ForCausalLM, qwen_cfg)]:
        m = cls(cfg).float().eval()
        with torch.no_grad():
            for k, p in m.named_parameters():
                if p.dim() == 2:
                    p.copy_(q8_0_representable(torch.randn_like(p) * 0.08))
                else:  # norms and biases: random around their usual values (stored in F32)
                    p.copy_((1.0 if "norm" in k else 0.0) + 0.1 * torch.randn_like(p))
        models[name] = (m, cfg)
    return models


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", required=True, help="folder of llama.cpp's programs (scripts/build_llama_cpp.sh)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "gguf"))
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    write_types(out_dir, args.llama_bin, rng)

    from peft import LoraConfig, get_peft_model
    models = build_models(rng)
    ids = [int(i) for i in rng.integers(3, 256, size=N_IDS)]
    result = {"ids": ids, "greedy_tokens": GREEDY, "models": {}}
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, (model, cfg) in models.items():
            f32_path = os.path.join(tmp, f"tiny_{arch}.f32.gguf")
            write_model_gguf(f32_path, model, cfg, arch, T.F32)
            ref_f32, greedy_f32 = llama_cpp(args.llama_bin, f32_path, ids, tmp)
            with torch.no_grad():
                hf = model(torch.tensor([ids])).logits[0].numpy()
            err = float(np.abs(hf - ref_f32).max())
            if err > 1e-3:
                sys.exit(f"tiny {arch}: llama.cpp's float32 logits differ from transformers' by {err} (the written GGUF is wrong)")
            print(f"tiny {arch}: llama.cpp F32 vs transformers max |diff| {err:.2e}")
            files = {f"tiny_{arch}.q8_0.gguf": None}
            q8_path = os.path.join(out_dir, f"tiny_{arch}.q8_0.gguf")
            write_model_gguf(q8_path, model, cfg, arch, T.Q8_0)
            if arch == "llama":
                kq = os.path.join(out_dir, "tiny_llama.q4_k_m.gguf")
                run([os.path.join(args.llama_bin, "llama-quantize"), f32_path, kq, "Q4_K_M"])
                files["tiny_llama.q4_k_m.gguf"] = None
            entry = {"greedy_f32": greedy_f32, "files": {}}
            arrays[f"{arch}.f32"] = ref_f32
            arrays[f"{arch}.transformers"] = hf
            for fname in files:
                ref_q, greedy_q = llama_cpp(args.llama_bin, os.path.join(out_dir, fname), ids, tmp)
                arrays[f"{arch}.{fname}"] = ref_q
                entry["files"][fname] = {"greedy": greedy_q, "max_abs_diff_vs_f32": float(np.abs(ref_q - ref_f32).max())}
                print(f"  {fname}: llama.cpp quantized vs float32 max |diff| {entry['files'][fname]['max_abs_diff_vs_f32']:.3f}")
            if arch == "llama":
                torch.manual_seed(1)
                cfg_lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"], init_lora_weights=False)
                pm = get_peft_model(model, cfg_lora).eval()
                with torch.no_grad():
                    arrays["llama.peft_lora"] = pm(torch.tensor([ids])).logits[0].numpy()
                pm.save_pretrained(os.path.join(out_dir, "tiny_lora"))
                os.remove(os.path.join(out_dir, "tiny_lora", "README.md"))  # PEFT's model card stub
                pm.unload()
            result["models"][arch] = entry
    with open(os.path.join(out_dir, "tiny_models.json"), "w") as f:
        json.dump(result, f, indent=1)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
              os.path.join(out_dir, "tiny_models.safetensors"))
    print("wrote", out_dir)


if __name__ == "__main__":
    main()
