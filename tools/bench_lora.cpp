// `peft bench lora-layer` and `peft bench train-step`: one lora.Linear, and one
// AdamW step of the fine-tuning demo's model, against the same workload in
// PyTorch + PEFT (tools/bench/lora_layer.py, tools/bench/train_step.py).
#include <algorithm>
#include <cstdio>

#include "adapters/peft.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/bench_common.h"
#include "tools/charlm.h"
#include "tools/cli.h"

namespace peft::cli::bench {

namespace {

struct LayerShape {
  int64_t tokens, d, r;
};
const LayerShape kShapes[] = {{8, 64, 4}, {64, 256, 8}, {512, 1024, 8}, {512, 4096, 16}};
const char* kLayerCases[] = {"base", "lora", "lora-fwd-bwd", "merged"};

// A host module with one Linear "lin" (d -> d, bias) and LoRA r on it; B drawn small
// (not zero) so no product is trivially zero. Mirrors tools/bench/lora_layer.py.
std::shared_ptr<nn::Module> lora_host(const LayerShape& s) {
  Generator g(0);
  auto host = std::make_shared<nn::Module>("Host");
  host->register_module("lin", std::make_shared<nn::Linear>(s.d, s.d, true, &g));
  LoraConfig cfg;
  cfg.r = s.r;
  cfg.lora_alpha = double(2 * s.r);
  cfg.target_modules = TargetModules::list({"lin"});
  inject_adapter_in_model(cfg, *host);
  NoGradGuard ng;
  auto& layer = static_cast<TunerLayer&>(host->child("lin"));
  layer.child("lora_B").child("default").param("weight").normal_(0.0, 0.02, g);
  return host;
}

// Uniform token ids in [0, n).
Tensor random_ids(int64_t n, const Shape& shape, Generator& g) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::vector<int64_t> v(static_cast<size_t>(numel));
  for (auto& x : v) x = int64_t(g.next_u32() % uint32_t(n));
  return from_vector(v, shape);
}

}  // namespace

int bench_lora_layer(const std::vector<std::string>& args, Report& rep) {
  Options o;
  std::vector<std::string> rest = parse_common(args, o);
  std::vector<LayerShape> shapes(std::begin(kShapes), std::end(kShapes));
  bool custom = false;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--shape" && i + 1 < rest.size()) {
      long t = 0, d = 0, r = 0;
      char tail = 0;
      const std::string& v = rest[++i];
      if (std::sscanf(v.c_str(), "%ldx%ldx%ld%c", &t, &d, &r, &tail) != 3 || t <= 0 || d <= 0 || r <= 0)
        throw UsageError{"--shape expects TOKENSxDxR, got '" + v + "'"};
      if (!custom) shapes.clear(), custom = true;
      shapes.push_back({t, d, r});
    } else {
      throw UsageError{"unknown option " + rest[i]};
    }
  }
  if (o.help) {
    std::printf(
        "usage: peft bench lora-layer [--shape TxDxR ...] [options]\n"
        "  One lora.Linear (d -> d with bias, LoRA rank r, float32) on x [T, d]: the base\n"
        "  Linear alone, the LoRA forward, LoRA forward+backward (x requires grad; grads\n"
        "  reset each call) and the forward after merge, against PyTorch + PEFT on the same\n"
        "  thread count. Default shapes 8x64x4, 64x256x8, 512x1024x8, 512x4096x16. The\n"
        "  'x the base forward' note is measured apart: base and LoRA forward alternating\n"
        "  in short rounds (at least 10), medians.\n%s",
        kCommonHelp);
    return 0;
  }
  auto py = start_worker("lora-layer", o, rep);
  std::vector<Row> rows;
  for (const LayerShape& s : shapes) {
    auto host = lora_host(s), merged_host = lora_host(s);
    merge_adapters(*merged_host);
    auto& layer = host->child("lin");
    auto& base = static_cast<TunerLayer&>(layer).get_base_layer();
    auto& merged = merged_host->child("lin");
    Generator g(1);
    Tensor x = randn({s.tokens, s.d}, g), up = randn({s.tokens, s.d}, g);
    Tensor xg = x.detach().requires_grad_();
    std::vector<Tensor> trainable;
    for (const auto& [n, p] : layer.named_parameters())
      if (p.requires_grad()) trainable.push_back(p);
    Case base_fwd, lora_fwd;
    base_fwd.run = [&] { NoGradGuard ng; base.forward(x); };
    lora_fwd.run = [&] { NoGradGuard ng; layer.forward(x); };
    for (const char* kind : kLayerCases) {
      Case c;
      std::string k = kind;
      if (k == "base") c = base_fwd;
      else if (k == "lora") c = lora_fwd;
      else if (k == "merged") c.run = [&] { NoGradGuard ng; merged.forward(x); };
      else
        c.run = [&] {
          layer.forward(xg).backward(up);
          xg.zero_grad();
          for (Tensor& p : trainable) p.zero_grad();
        };
      nlohmann::json req = {{"case", k}, {"tokens", s.tokens}, {"d", s.d}, {"r", s.r}};
      Row row;
      auto [ours, theirs] = interleave(c, py.get(), req, o, &row);
      char what[96];
      std::snprintf(what, sizeof what, "%s %ldx%ldx%ld", kind, long(s.tokens), long(s.d), long(s.r));
      row.bench = "lora-layer", row.what = what, row.ours = ours, row.theirs = theirs;
      rows.push_back(row);
      std::fprintf(stderr, "  %-34s %s\n", what, fmt_time(ours).c_str());
    }
    // The target is LoRA forward over base forward: measured on its own with the two
    // alternating in short rounds, so that the machine's drift between the rows above
    // does not enter the ratio.
    Options po = o;
    po.reps = 2;
    Sampler sb(base_fwd, po), sl(lora_fwd, po);
    std::vector<double> tb, tl;
    for (int round = 0; round < std::max(o.rounds, 10); ++round) {
      sb.round(tb);
      sl.round(tl);
    }
    char note[64];
    std::snprintf(note, sizeof note, "%.2fx the base forward", median(tl) / median(tb));
    rows[rows.size() - 3].note = note;
  }
  print_rows(rows, o.markdown);
  rep.rows.insert(rep.rows.end(), rows.begin(), rows.end());
  return 0;
}

int bench_train_step(const std::vector<std::string>& args, Report& rep) {
  Options o;
  o.reps = 3;
  o.rounds = 12;
  std::vector<std::string> rest = parse_common(args, o);
  int64_t batch = 256;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--batch" && i + 1 < rest.size()) batch = parse_int(rest[i], rest[i + 1], 1), ++i;
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (o.help) {
    std::printf(
        "usage: peft bench train-step [--batch N] [options]\n"
        "  One optimizer step of the model `peft finetune` trains (CharLM: context 5, embed\n"
        "  24, hidden 512, 46 tokens) with LoRA r=8, alpha=16 on fc1, fc2, lm_head: forward,\n"
        "  cross-entropy, backward, AdamW (lr 1e-2, no weight decay) step, zero_grad and\n"
        "  loss.item(), on random batches drawn up front; against PyTorch + PEFT. Default\n"
        "  batch 256 (peft finetune's).\n%s",
        kCommonHelp);
    return 0;
  }
  auto py = start_worker("train-step", o, rep);
  Generator g(0);
  lm::CharLMConfig cfg;
  cfg.vocab = lm::Vocab::standard().size();
  lm::CharLM model(cfg, g);
  LoraConfig lc;
  lc.r = 8;
  lc.lora_alpha = 16;
  lc.target_modules = TargetModules::list({"fc1", "fc2", "lm_head"});
  inject_adapter_in_model(lc, model);
  model.train();
  nn::NamedTensors trainable;
  for (const auto& [n, p] : model.named_parameters())
    if (p.requires_grad()) trainable.emplace_back(n, p);
  nn::AdamW opt(trainable, {.lr = 1e-2, .weight_decay = 0.0});
  std::vector<lm::Batch> batches;
  for (int i = 0; i < 8; ++i)
    batches.push_back({random_ids(cfg.vocab, {batch, cfg.context}, g), random_ids(cfg.vocab, {batch}, g)});
  size_t step = 0;
  Case c;
  c.run = [&] {
    const lm::Batch& b = batches[step++ % batches.size()];
    Tensor loss = cross_entropy(model(b.ctx), b.target);
    loss.backward();
    opt.step();
    opt.zero_grad();
    (void)loss.item();
  };
  Row row;
  auto [ours, theirs] = interleave(c, py.get(), {{"case", "step"}, {"batch", batch}}, o, &row);
  char what[64];
  std::snprintf(what, sizeof what, "CharLM LoRA step, batch %ld", long(batch));
  row.bench = "train-step", row.what = what, row.ours = ours, row.theirs = theirs;
  std::vector<Row> rows{row};
  print_rows(rows, o.markdown);
  rep.rows.insert(rep.rows.end(), rows.begin(), rows.end());
  return 0;
}

}  // namespace peft::cli::bench
