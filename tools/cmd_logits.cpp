// `peft logits`: the char LM's logits for fixed random contexts, with or without an
// adapter folder, written to safetensors so tools/python/check_lm_adapter.py can
// compare them with Python PEFT's for the same folder. With --model (a GGUF file or a model
// folder), a decoder's logits for the texts of a prompts file (tools/python/
// check_decoder_adapter.py).
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/charlm.h"
#include "tools/cli.h"
#include "tools/text_commands.h"
#include "nn/transformers/text_model.h"

namespace peft::cli {

std::shared_ptr<lm::CharLM> load_charlm(const std::string& path);

namespace {

const char* kLogitsHelp = R"(usage: peft logits --base BASE.safetensors --out FILE.safetensors [options]
       peft logits --model MODEL --prompts FILE.jsonl --out FILE.safetensors [options]

Writes ctx (int64 [N, context], random token ids), logits_base (the base
model's logits) and, with --adapter, logits (with the adapter loaded by
load_adapter), float32 [N, vocab], for checking against Python PEFT.

With --model (a decoder: a GGUF file or a Hugging Face model folder), the texts of
FILE.jsonl (one per line: a JSON string, or an object with "text") are tokenized with the
model's tokenizer (special tokens added) and it writes, for text i, ids.i (int64 [T]),
logits_base.i and, with --adapter, logits.i (float32 [T, vocab]: every position).

options:
  --adapter DIR  adapter folder (e.g. written by peft finetune)
  --n N          number of contexts (default 64)
  --seed N       seed of the contexts (default 0)
  --dtype D      --model: f32, bf16 or f16 (a GGUF's quantized weights dequantized on load;
                 default: as stored)
  --kv-cache K   --model, GGUF: f32 (default here: no rounding, as peft finetune trains),
                 f16 or bf16 (llama.cpp's KV-cache rounding, peft generate's default)
  --threads N    CPU threads
)";

std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read ", path);
  std::vector<std::string> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      fail(path, ":", n, ": not valid JSON: ", e.what());
    }
    if (j.is_object() && j.contains("text")) j = j["text"];
    if (!j.is_string()) fail(path, ":", n, ": expected a JSON string or {\"text\": string}");
    out.push_back(j.get<std::string>());
  }
  if (out.empty()) fail(path, ": no text");
  return out;
}

// --model: a decoder's logits at every position of each prompt, base and with --adapter.
int run_model_logits(const Args& a) {
  nn::PretrainedOptions mo = model_options(a);
  mo.kv_cache_dtype = DType::float32;
  apply_kv_cache_option(a, mo);
  apply_threads_option(a);
  const std::string model_path = a.required("model"), out = a.required("out");
  nn::TextModel tm = nn::TextModel::load(model_path, mo);
  auto& lm = *tm.model;
  if (!lm.is_decoder()) throw UsageError{model_path + " is a " + lm.type_name() + ", not a decoder"};
  const std::vector<std::string> prompts = read_prompts(a.required("prompts"));
  std::vector<Tensor> ids;
  for (const std::string& p : prompts) {
    const std::vector<int64_t> v = tm.tok().encode_batch({p}, true, std::nullopt, std::nullopt)[0].ids;
    if (v.empty()) fail("a prompt has no token");
    ids.push_back(from_vector(v, {1, int64_t(v.size())}));
  }
  NoGradGuard ng;
  auto logits = [&](const Tensor& x) {
    nn::ModelInputs in;
    in.input_ids = x;
    Tensor y = lm.forward(in);  // [1, T, V]
    return y.select(0, 0).to(DType::float32).contiguous();
  };
  StateDict sd;
  for (size_t i = 0; i < ids.size(); ++i) {
    sd.set("ids." + std::to_string(i), ids[i].select(0, 0).contiguous());
    sd.set("logits_base." + std::to_string(i), logits(ids[i]));
  }
  if (a.has("adapter")) {
    load_adapter(lm, a.get("adapter"));
    lm.eval();
    for (size_t i = 0; i < ids.size(); ++i) sd.set("logits." + std::to_string(i), logits(ids[i]));
  }
  io::save_safetensors(out, sd);
  std::printf("logits: %zu prompts of %s%s -> %s\n", prompts.size(), model_path.c_str(),
              a.has("adapter") ? (" + " + a.get("adapter")).c_str() : "", out.c_str());
  return 0;
}

int run_logits(const std::vector<std::string>& argv) {
  Args a(argv, {"base", "out", "adapter", "n", "seed", "model", "prompts", "dtype", "kv-cache", "threads"}, {});
  if (a.help) {
    std::printf("%s", kLogitsHelp);
    return 0;
  }
  if (a.has("model")) return run_model_logits(a);
  auto model = load_charlm(a.required("base"));
  const std::string out = a.required("out");
  const int64_t n = a.get_int("n", 64), k = model->config().context, V = model->config().vocab;
  if (n <= 0) throw UsageError{"--n must be positive"};
  Generator g(uint64_t(a.get_int("seed", 0)));
  std::vector<int64_t> ids(static_cast<size_t>(n * k));
  for (auto& x : ids) x = int64_t(g.next_u32() % uint32_t(V));
  Tensor ctx = from_vector(ids, {n, k});
  model->eval();
  NoGradGuard ng;
  StateDict sd;
  sd.set("ctx", ctx);
  sd.set("logits_base", (*model)(ctx).contiguous());
  if (a.has("adapter")) {
    load_adapter(*model, a.get("adapter", ""));
    sd.set("logits", (*model)(ctx).contiguous());
  }
  io::save_safetensors(out, sd);
  std::printf("logits: %lld contexts -> %s\n", (long long)n, out.c_str());
  return 0;
}

Registrar reg({"logits", "write logits (base and with an adapter): the char LM's for fixed contexts, a decoder's (--model) for prompts", run_logits});

}  // namespace
}  // namespace peft::cli
