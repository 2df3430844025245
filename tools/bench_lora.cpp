// `peft bench lora-layer` and `peft bench train-step`: one lora.Linear, and one
// AdamW step of the fine-tuning demo's model, against the same workload in
// PyTorch + PEFT (tools/bench/lora_layer.py, tools/bench/train_step.py).
#include <algorithm>
#include <cstdio>

#include "adapters/peft.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "runtime/autograd.h"
#include "runtime/device.h"
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
// (not zero) so no product is trivially zero. `adapters` > 1 adds adapters a1, a2, ...
// (the mixed-batch case). Mirrors tools/bench/lora_layer.py.
std::shared_ptr<nn::Module> lora_host(const LayerShape& s, DType dt = DType::float32, Device dev = Device::cpu,
                                      int adapters = 1) {
  Generator g(0);
  auto host = std::make_shared<nn::Module>("Host");
  host->register_module("lin", std::make_shared<nn::Linear>(s.d, s.d, true, &g));
  LoraConfig cfg;
  cfg.r = s.r;
  cfg.lora_alpha = double(2 * s.r);
  cfg.target_modules = TargetModules::list({"lin"});
  inject_adapter_in_model(cfg, *host);
  for (int i = 1; i < adapters; ++i) inject_adapter_in_model(cfg, *host, "a" + std::to_string(i));
  {
    NoGradGuard ng;
    auto& layer = static_cast<TunerLayer&>(host->child("lin"));
    for (int i = 0; i < adapters; ++i)
      layer.child("lora_B").child(i == 0 ? "default" : "a" + std::to_string(i)).param("weight").normal_(0.0, 0.02, g);
  }
  if (dt != DType::float32) host->to(dt);
  if (dev != Device::cpu) host->to(dev);
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
  std::string device_name_arg = "cpu", dtype_arg = "float32";
  int mixed_adapters = 0;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--device" && i + 1 < rest.size()) {
      device_name_arg = rest[++i];
    } else if (rest[i] == "--dtype" && i + 1 < rest.size()) {
      dtype_arg = rest[++i];
      if (dtype_arg != "float32" && dtype_arg != "bfloat16")
        throw UsageError{"--dtype expects float32 or bfloat16, got '" + dtype_arg + "'"};
    } else if (rest[i] == "--mixed" && i + 1 < rest.size()) {
      mixed_adapters = int(parse_int(rest[i], rest[i + 1], 2));
      ++i;
    } else if (rest[i] == "--shape" && i + 1 < rest.size()) {
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
        "usage: peft bench lora-layer [--shape TxDxR ...] [--device D] [--dtype T] [--mixed K] [options]\n"
        "  One lora.Linear (d -> d with bias, LoRA rank r, float32) on x [T, d]: the base\n"
        "  Linear alone, the LoRA forward, LoRA forward+backward (x requires grad; grads\n"
        "  reset each call) and the forward after merge, against PyTorch + PEFT on the same\n"
        "  thread count. Default shapes 8x64x4, 64x256x8, 512x1024x8, 512x4096x16. The\n"
        "  'x the base forward' note is measured apart: base and LoRA forward alternating\n"
        "  in short rounds (at least 10), medians.\n"
        "  --device cpu|cuda|cuda:N and --dtype float32|bfloat16 place the layer and x (PyTorch\n"
        "  on the same device); --mixed K adds a mixed-batch case: K adapters, row i of x using\n"
        "  adapter i mod K (PEFT's adapter_names=). Each shape ends with one summary line: LoRA\n"
        "  forward over base, base over PyTorch's base and (with --mixed) mixed over base.\n%s",
        kCommonHelp);
    return 0;
  }
  const Device dev = parse_device(device_name_arg);
  if (dev == Device::meta) throw UsageError{"--device meta has nothing to time; use cpu or cuda"};
  const DType dt = dtype_arg == "bfloat16" ? DType::bfloat16 : DType::float32;
  auto py = start_worker("lora-layer", o, rep);
  std::vector<Row> rows;
  std::vector<std::string> summaries;
  // Kernels are queued asynchronously on a GPU: a timed call ends when they have run.
  auto synced = [dev](std::function<void()> f) {
    if (dev == Device::cpu) return f;
    return std::function<void()>([f] {
      f();
      cuda_synchronize();
    });
  };
  for (const LayerShape& s : shapes) {
    auto host = lora_host(s, dt, dev), merged_host = lora_host(s, dt, dev);
    merge_adapters(*merged_host);
    auto& layer = host->child("lin");
    auto& base = static_cast<TunerLayer&>(layer).get_base_layer();
    auto& merged = merged_host->child("lin");
    Generator g(1);
    Tensor x = randn({s.tokens, s.d}, g).to(dt).to(dev), up = randn({s.tokens, s.d}, g).to(dt).to(dev);
    Tensor xg = x.detach().requires_grad_();
    std::vector<Tensor> trainable;
    for (const auto& [n, p] : layer.named_parameters())
      if (p.requires_grad()) trainable.push_back(p);
    std::shared_ptr<nn::Module> mixed_host;
    std::vector<std::string> mixed_names;  // row i's adapter (PEFT's adapter_names=...)
    if (mixed_adapters > 1) {
      mixed_host = lora_host(s, dt, dev, mixed_adapters);
      for (int64_t i = 0; i < s.tokens; ++i)
        mixed_names.push_back(i % mixed_adapters == 0 ? "default" : "a" + std::to_string(i % mixed_adapters));
    }
    Case base_fwd, lora_fwd;
    base_fwd.run = synced([&] { NoGradGuard ng; base.forward(x); });
    lora_fwd.run = synced([&] { NoGradGuard ng; layer.forward(x); });
    std::vector<std::string> kinds(std::begin(kLayerCases), std::end(kLayerCases));
    if (mixed_host) kinds.push_back("mixed");
    double base_ours = 0;
    std::optional<double> base_theirs;
    for (const std::string& k : kinds) {
      Case c;
      if (k == "base") c = base_fwd;
      else if (k == "lora") c = lora_fwd;
      else if (k == "merged") c.run = synced([&] { NoGradGuard ng; merged.forward(x); });
      else if (k == "mixed") c.run = synced([&] { NoGradGuard ng; forward_mixed_batch(*mixed_host, x, mixed_names); });
      else
        c.run = synced([&] {
          layer.forward(xg).backward(up);
          xg.zero_grad();
          for (Tensor& p : trainable) p.zero_grad();
        });
      nlohmann::json req = {{"case", k},       {"tokens", s.tokens}, {"d", s.d}, {"r", s.r},
                            {"device", device_name_arg}, {"dtype", dtype_arg}, {"adapters", std::max(mixed_adapters, 1)}};
      Row row;
      auto [ours, theirs] = interleave(c, py.get(), req, o, &row);
      if (k == "base") base_ours = ours, base_theirs = theirs;
      char what[96];
      std::snprintf(what, sizeof what, "%s %ldx%ldx%ld", k.c_str(), long(s.tokens), long(s.d), long(s.r));
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
    const double lora_ratio = median(tl) / median(tb);
    char note[64];
    std::snprintf(note, sizeof note, "%.2fx the base forward", lora_ratio);
    rows[rows.size() - (mixed_host ? 4 : 3)].note = note;
    char summary[320];
    int n = std::snprintf(summary, sizeof summary, "lora-layer %ldx%ldx%ld %s %s: LoRA fwd %.2fx base",
                          long(s.tokens), long(s.d), long(s.r), dtype_arg.c_str(), device_name_arg.c_str(), lora_ratio);
    if (base_theirs)
      n += std::snprintf(summary + n, sizeof summary - size_t(n), "; base %.2fx PyTorch's", base_ours / *base_theirs);
    else
      n += std::snprintf(summary + n, sizeof summary - size_t(n), "; base vs PyTorch not measured");
    if (mixed_host) {
      Case mixed_fwd;
      mixed_fwd.run = synced([&] { NoGradGuard ng; forward_mixed_batch(*mixed_host, x, mixed_names); });
      Sampler sb2(base_fwd, po), sm(mixed_fwd, po);
      std::vector<double> tb2, tm;
      for (int round = 0; round < std::max(o.rounds, 10); ++round) {
        sb2.round(tb2);
        sm.round(tm);
      }
      const double mixed_ratio = median(tm) / median(tb2);
      char mnote[64];
      std::snprintf(mnote, sizeof mnote, "%.2fx the base forward", mixed_ratio);
      rows.back().note = mnote;
      std::snprintf(summary + n, sizeof summary - size_t(n), "; mixed batch of %d adapters %.2fx base", mixed_adapters,
                    mixed_ratio);
    }
    summaries.push_back(summary);
  }
  print_rows(rows, o.markdown);
  for (const std::string& line : summaries) std::printf("%s\n", line.c_str());
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
