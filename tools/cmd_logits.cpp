// `peft logits`: the char LM's logits for fixed random contexts, with or without an
// adapter folder, written to safetensors so tools/python/check_lm_adapter.py can
// compare them with Python PEFT's for the same folder.
#include <cstdio>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/charlm.h"
#include "tools/cli.h"

namespace peft::cli {

std::shared_ptr<lm::CharLM> load_charlm(const std::string& path);

namespace {

const char* kLogitsHelp = R"(usage: peft logits --base BASE.safetensors --out FILE.safetensors [options]

Writes ctx (int64 [N, context], random token ids), logits_base (the base
model's logits) and, with --adapter, logits (with the adapter loaded by
load_adapter), float32 [N, vocab], for checking against Python PEFT.

options:
  --adapter DIR  adapter folder (e.g. written by peft finetune)
  --n N          number of contexts (default 64)
  --seed N       seed of the contexts (default 0)
)";

int run_logits(const std::vector<std::string>& argv) {
  Args a(argv, {"base", "out", "adapter", "n", "seed"}, {});
  if (a.help) {
    std::printf("%s", kLogitsHelp);
    return 0;
  }
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

Registrar reg({"logits", "write the char LM's logits (base and with an adapter) for fixed contexts", run_logits});

}  // namespace
}  // namespace peft::cli
