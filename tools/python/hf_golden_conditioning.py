"""How far an hf_* golden's float32 gradients sit from the same function evaluated in float64.

Not a test dependency. Needs torch, transformers 5 and peft 0.21:
    python tools/python/hf_golden_conditioning.py tests/data/hf/hf_llama_lora_all_linear [--model-dir DIR]

The model is loaded in float32, the PEFT adapter from the case's peft/ folder, everything is
converted to float64, and the gradients of sum(output * grad_seed) are compared with the
golden's default.grad.* in units of the goldens' tolerance (1e-5 + 1e-4 * max|golden|).
LlamaRMSNorm casts to float32 even in a float64 model, so it is replaced by the same formula
without the cast; attention runs through sdpa (eager casts softmax to float32).
A ratio above 1 means no float32 implementation with another operation order can be expected
to meet the tolerance on that tensor: the golden's own rounding error is larger.
"""
import argparse
import json

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

try:
    from transformers.models.llama import modeling_llama

    def _rms_norm_float64(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    modeling_llama.LlamaRMSNorm.forward = _rms_norm_float64
except ImportError:
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--model-dir", default=None)
    a = ap.parse_args()
    meta = json.load(open(f"{a.case}/case.json"))
    io = load_file(f"{a.case}/io.safetensors")
    cls = AutoModelForCausalLM if meta["output"] == "logits" else AutoModel
    model = cls.from_pretrained(a.model_dir or f"{a.case}/model", dtype=torch.float32, attn_implementation="sdpa")
    pm = PeftModel.from_pretrained(model, f"{a.case}/peft", is_trainable=True).to(torch.float64)
    pm.eval()
    out = pm(**{k: io[k] for k in meta["inputs"]})
    out = out.logits if meta["output"] == "logits" else out.last_hidden_state
    (out * io["default.grad_seed"].double()).sum().backward()
    rows = []
    for name, p in pm.named_parameters():
        if not p.requires_grad or p.grad is None:
            continue
        key = "default.grad." + name.replace("base_model.model.", "", 1)
        g = io[key].double()
        tol = 1e-5 + 1e-4 * g.abs().max().item()
        rows.append(((p.grad - g).abs().max().item() / tol, name))
    rows.sort(reverse=True)
    print(f"{meta['name']}: golden float32 vs float64, in units of the tolerance (worst first)")
    for r, n in rows[:5]:
        print(f"  {r:6.2f}  {n}")


if __name__ == "__main__":
    main()
