// libFuzzer target: load_adapter on a folder whose adapter_config.json and
// adapter_model.safetensors are fuzzed, into a small host model (the goldens' three archs).
// Input layout: byte 0 picks the host model; bytes 1-2 (little-endian) are the config's
// length n; the next n bytes are adapter_config.json; the rest is adapter_model.safetensors.
// Invariants: load_adapter either succeeds (then forward and get_peft_model_state_dict work)
// or throws peft::Error leaving the model exactly as before (tools/fuzz/fuzz_common.h snapshot).
#include <fstream>

#include "adapters/folder.h"
#include "runtime/autograd.h"
#include "tools/fuzz/fuzz_common.h"
#include "tools/host_models.h"

using namespace peft;

namespace {

struct Host {
  const char* arch;
  const char* spec;
};
const Host kHosts[] = {
    {"mlp", R"({"in": 10, "hidden": 20, "out": 2})"},
    {"deep", R"({"V": 32, "D": 16, "F": 32, "L": 2})"},
    {"dummy", R"({"V": 10, "D": 10})"},
};

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  if (!out) fuzz::die("cannot write " + path);
}

Tensor input_for(const Host& h) {
  if (std::string(h.arch) == "mlp") return ones({2, 10});
  return from_vector(std::vector<int64_t>{1, 2, 3}, {1, 3});
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::silence_warnings();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const Host& host = kHosts[data[0] % 3];
  size_t n = size_t(data[1]) | (size_t(data[2]) << 8);
  data += 3;
  size -= 3;
  if (n > size) n = size;
  const std::string dir = fuzz::scratch_dir();
  write_file(dir + "/adapter_config.json", data, n);
  write_file(dir + "/adapter_model.safetensors", data + n, size - n);

  auto model = tools::build_host_model(host.arch, nlohmann::json::parse(host.spec));
  const std::string before = fuzz::snapshot(*model);
  try {
    load_adapter(*model, dir);
  } catch (const Error&) {
    if (fuzz::snapshot(*model) != before) fuzz::die("a failed load_adapter changed the model");
    return 0;
  }
  // Loaded: the model runs and its adapter can be read back.
  try {
    NoGradGuard ng;
    (void)model->forward(input_for(host));
    (void)get_peft_model_state_dict(*model, "default");
  } catch (const Error&) {
    // e.g. low_cpu_mem_usage adapters with missing keys refuse to run: a clear error is fine.
  }
  return 0;
}
