// `peft merge --base BASE.safetensors --adapter DIR [--adapter DIR2 --weight w ...] --out OUT`:
// merges adapter folders into a base file under the host model's own keys (tools/merge.h).
#include <cstdio>
#include <filesystem>

#include "tools/args.h"
#include "tools/cli.h"
#include "tools/merge.h"
#include "train/progress.h"

namespace peft::cli {
namespace {

const char* kHelp =
    "usage: peft merge --base BASE.safetensors --adapter DIR [--weight W] [--adapter DIR2 [--weight W2] ...]\n"
    "                  --out OUT.safetensors [--dtype float32|bfloat16|float16]\n"
    "       peft merge --base MODEL_DIR --adapter DIR ... --out OUT_DIR\n"
    "  Merges PEFT adapter folders (LoRA, DoRA, AdaLoRA, IA3) into base weights stored under\n"
    "  the host model's own keys (e.g. 'linear.weight'), without knowing the architecture.\n"
    "  With a Hugging Face model folder (config.json + model.safetensors) as --base, the\n"
    "  architecture is read so GPT-2's Conv1D layers (weights stored [in, out]) merge\n"
    "  transposed; OUT_DIR gets model.safetensors and copies of the folder's other files.\n"
    "  A bare file with an adapter saved with fan_in_fan_out=true is refused, never merged wrong.\n"
    "  Adapters are merged in the order given; --weight scales the preceding adapter's delta\n"
    "  (LoRA/AdaLoRA without DoRA; default 1). Tensors are processed one at a time, so memory\n"
    "  stays near one layer; the output is written atomically (the old file survives errors).\n"
    "  --dtype   dtype of the output's floating tensors (default: as in the base file)\n";

DType parse_dtype(const std::string& s) {
  if (s == "float32" || s == "f32" || s == "fp32") return DType::float32;
  if (s == "bfloat16" || s == "bf16") return DType::bfloat16;
  if (s == "float16" || s == "f16" || s == "fp16") return DType::float16;
  throw UsageError{"--dtype must be float32, bfloat16 or float16, got '" + s + "'"};
}

int run_merge(const std::vector<std::string>& argv) {
  // --adapter and --weight pair up in order, so they are read from argv directly.
  std::vector<tools::MergeInput> inputs;
  std::vector<std::string> rest;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--adapter" || a == "--weight") {
      if (i + 1 >= argv.size()) throw UsageError{"option " + a + " needs a value"};
      const std::string& v = argv[++i];
      if (a == "--adapter") {
        inputs.push_back({v, 1.0});
      } else {
        if (inputs.empty()) throw UsageError{"--weight must follow the --adapter it weights"};
        try {
          size_t pos = 0;
          inputs.back().weight = std::stod(v, &pos);
          if (pos != v.size()) throw 0;
        } catch (...) {
          throw UsageError{"--weight expects a number, got '" + v + "'"};
        }
      }
    } else {
      rest.push_back(a);
    }
  }
  Args a(rest, {"base", "out", "dtype"});
  if (a.help) {
    std::printf("%s", kHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  if (inputs.empty()) throw UsageError{"missing required option --adapter"};
  tools::MergeOptions o;
  if (a.has("dtype")) o.dtype = parse_dtype(a.get("dtype"));
  std::string base = a.required("base"), out = a.required("out");
  train::Progress bar("merge", 1);
  o.progress = [&](size_t done, size_t total, const std::string&) {
    if (total < 50) return;  // small files finish before a bar would help
    if (done == 1) bar = train::Progress("merge", int64_t(total));
    bar.update(int64_t(done), "tensors");
  };
  const bool folder = std::filesystem::is_directory(base);
  tools::MergeReport r = folder ? tools::merge_into_folder(base, inputs, out, o) : tools::merge_into_file(base, inputs, out, o);
  std::printf("merge: wrote %s: %zu tensors, %zu modules merged, %zu tensors taken from the adapter(s)\n",
              out.c_str(), r.tensors, r.merged_modules, r.replaced);
  return 0;
}

Registrar reg({"merge", "merge adapter folders into a base safetensors file (streaming, atomic)", run_merge});

}  // namespace
}  // namespace peft::cli
