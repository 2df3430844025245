// libFuzzer target: the state-dict key mapping of set_peft_model_state_dict /
// get_peft_model_state_dict with fuzzed key names, shapes, dtypes and values.
// Input: byte 0 picks a host model + adapter config (kSetups); the rest is text, one tensor
// a line: "<key> <shape> <value> [dtype]", shape "4,10" or "-" for a scalar, value any
// strtod number (nan, inf included), dtype f32|f64|bf16|f16|i64|bool. An optional first
// line "@name" loads into adapter `name` instead of "default".
// Invariants: no crash; peft::Error for what is refused; after a successful load the model
// runs, and its own get_peft_model_state_dict loads back.
// PEFT_FUZZ_WRITE_SEEDS=DIR writes one seed per setup (its real state dict) and exits.
#include <cstdlib>
#include <fstream>

#include "adapters/folder.h"
#include "runtime/autograd.h"
#include "tools/fuzz/fuzz_common.h"
#include "tools/host_models.h"

using namespace peft;

namespace {

struct Setup {
  const char* arch;
  const char* spec;
  const char* config;
};
const Setup kSetups[] = {
    {"mlp", R"({"in": 10, "hidden": 20, "out": 2})",
     R"({"peft_type": "LORA", "r": 4, "target_modules": ["lin0", "lin1"], "bias": "lora_only"})"},
    {"deep", R"({"V": 32, "D": 16, "F": 32, "L": 2})",
     R"({"peft_type": "LORA", "r": 4, "target_modules": "layers\\.\\d+\\.attn\\.(q|v)_proj",
         "rank_pattern": {"q_proj": 2}, "modules_to_save": ["lm_head"]})"},
    {"mlp", R"({"in": 10, "hidden": 20, "out": 2})",
     R"({"peft_type": "IA3", "target_modules": ["lin0", "lin1"], "feedforward_modules": ["lin1"]})"},
    {"mlp", R"({"in": 10, "hidden": 20, "out": 2})",
     R"({"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "total_step": 20, "tinit": 2, "tfinal": 2,
         "target_modules": ["lin0", "lin1"]})"},
    {"dummy", R"({"V": 10, "D": 10})",
     R"({"peft_type": "LORA", "r": 2, "target_modules": ["embedding", "linear"]})"},
    {"mlp", R"({"in": 10, "hidden": 20, "out": 2})",
     R"({"peft_type": "LORA", "r": 2, "target_modules": ["lin0", "lin1"], "use_dora": true})"},
};
constexpr size_t kNumSetups = sizeof(kSetups) / sizeof(kSetups[0]);

std::shared_ptr<nn::Module> make_model(const Setup& s) {
  auto m = tools::build_host_model(s.arch, nlohmann::json::parse(s.spec));
  inject_adapter_in_model(*config_from_json(std::string(s.config)), *m, "default");
  return m;
}

Tensor input_for(const Setup& s) {
  if (std::string(s.arch) == "mlp") return ones({2, 10});
  return from_vector(std::vector<int64_t>{1, 2, 3}, {1, 3});
}

bool parse_dtype(const std::string& s, DType& dt) {
  if (s == "f32") dt = DType::float32;
  else if (s == "f64") dt = DType::float64;
  else if (s == "bf16") dt = DType::bfloat16;
  else if (s == "f16") dt = DType::float16;
  else if (s == "i64") dt = DType::int64;
  else if (s == "bool") dt = DType::bool_;
  else return false;
  return true;
}

const char* dtype_token(DType dt) {
  switch (dt) {
    case DType::float64: return "f64";
    case DType::bfloat16: return "bf16";
    case DType::float16: return "f16";
    case DType::int64: return "i64";
    case DType::bool_: return "bool";
    default: return "f32";
  }
}

void write_seeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  for (size_t i = 0; i < kNumSetups; ++i) {
    auto m = make_model(kSetups[i]);
    std::string text(1, char(i));
    for (const auto& [k, t] : get_peft_model_state_dict(*m, "default")) {
      text += k + " ";
      if (t.dim() == 0) text += "-";
      for (int64_t d = 0; d < t.dim(); ++d) text += (d ? "," : "") + std::to_string(t.shape()[size_t(d)]);
      text += " 0.5 " + std::string(dtype_token(t.dtype())) + "\n";
    }
    std::ofstream(dir + "/setup" + std::to_string(i) + ".txt", std::ios::binary) << text;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_target(write_seeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Setup& setup = kSetups[data[0] % kNumSetups];
  std::istringstream in(std::string(reinterpret_cast<const char*>(data + 1), size - 1));
  std::string adapter = "default";
  StateDict sd;
  std::string line;
  int lines = 0;
  while (std::getline(in, line) && ++lines <= 64) {
    if (lines == 1 && !line.empty() && line[0] == '@') {
      adapter = line.substr(1);
      continue;
    }
    std::istringstream ls(line);
    std::string key, shape_s, value_s, dtype_s;
    if (!(ls >> key >> shape_s >> value_s)) continue;
    ls >> dtype_s;
    Shape shape;
    int64_t numel = 1;
    bool ok = true;
    if (shape_s != "-") {
      std::istringstream ss(shape_s);
      std::string d;
      while (std::getline(ss, d, ',')) {
        char* end = nullptr;
        long long v = std::strtoll(d.c_str(), &end, 10);
        // Tensors are built by the harness: keep them small (the library never sees more).
        if (end == d.c_str() || v < 0 || v > 4096 || shape.size() >= 4) { ok = false; break; }
        shape.push_back(v);
        numel *= v;
      }
    }
    if (!ok || numel > (1 << 16)) continue;
    DType dt = DType::float32;
    if (!dtype_s.empty() && !parse_dtype(dtype_s, dt)) continue;
    double value = std::strtod(value_s.c_str(), nullptr);
    if (!is_floating(dt) && !std::isfinite(value)) value = 1;
    sd.set(key, full(shape, dt == DType::bool_ ? (value != 0) : value, dt));
  }

  auto model = make_model(setup);
  try {
    set_peft_model_state_dict(*model, sd, adapter);
  } catch (const Error&) {
    return 0;
  }
  try {
    NoGradGuard ng;
    (void)model->forward(input_for(setup));
  } catch (const Error&) {
  }
  // The model's own adapter state dict always loads back.
  StateDict own;
  try {
    own = get_peft_model_state_dict(*model, "default");
  } catch (const Error& e) {
    fuzz::die(std::string("get_peft_model_state_dict failed after a successful load: ") + e.what());
  }
  try {
    set_peft_model_state_dict(*model, own, "default");
  } catch (const Error& e) {
    fuzz::die(std::string("the model's own state dict does not load back: ") + e.what());
  }
  return 0;
}
