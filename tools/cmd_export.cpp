// `peft export CASE_DIR OUT_DIR`: loads a golden case's adapters into its host
// model and writes them with save_pretrained, so tools/check_python_roundtrip.py
// can load our folders in Python PEFT and compare outputs.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "tools/args.h"
#include "tools/cli.h"
#include "tools/host_models.h"

namespace peft::cli {
namespace {

int run_export(const std::vector<std::string>& argv) {
  Args a(argv, {"dtype"});
  if (a.help || a.positional.size() != 2) {
    if (!a.help) throw UsageError{"expects CASE_DIR and OUT_DIR"};
    std::printf("usage: peft export CASE_DIR OUT_DIR [--dtype float32|bfloat16|float16]\n"
                "  Injects the case's adapters (case.json) into its host model, loads\n"
                "  adapter_<name>.safetensors and writes them with save_pretrained.\n");
    return 0;
  }
  namespace fs = std::filesystem;
  fs::path dir = a.positional[0];
  std::ifstream in(dir / "case.json");
  if (!in) fail("cannot read ", (dir / "case.json").string());
  nlohmann::json meta = nlohmann::json::parse(in);
  auto model = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
  model->load_state_dict(io::load_safetensors((dir / "base.safetensors").string()), true);
  std::vector<std::string> names;
  for (const auto& ad : meta["adapters"]) {
    std::string name = ad["name"].get<std::string>();
    PeftConfigPtr cfg = config_from_json(ad["config"].dump());
    inject_adapter_in_model(*cfg, *model, name);
    set_peft_model_state_dict(*model, io::load_safetensors((dir / ("adapter_" + name + ".safetensors")).string()), name);
    names.push_back(name);
  }
  SavePretrainedOptions so;
  std::string dt = a.get("dtype", "float32");
  if (dt == "bfloat16") so.dtype = DType::bfloat16;
  else if (dt == "float16") so.dtype = DType::float16;
  else if (dt != "float32") throw UsageError{"--dtype must be float32, bfloat16 or float16"};
  save_pretrained(*model, a.positional[1], names, so);
  std::printf("export: wrote %zu adapter(s) of %s to %s\n", names.size(), dir.string().c_str(),
              a.positional[1].c_str());
  return 0;
}

Registrar reg({"export", "write a golden case's adapters as a PEFT folder (for the Python round trip)", run_export});

}  // namespace
}  // namespace peft::cli
