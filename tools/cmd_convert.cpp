// `peft convert DIR --dtype bf16 --out DIR2`: rewrites an adapter folder (and its named
// sub-folders) with its floating tensors in another dtype; configs are copied unchanged.
// `peft convert DIR --to gguf --base MODEL.gguf --out ADAPTER.gguf`: llama.cpp's LoRA adapter
// file (adapters/lora/gguf_export.h).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "adapters/peft.h"
#include "io/safetensors.h"
#include "tools/args.h"
#include "tools/cli.h"
#include "adapters/lora/gguf_export.h"

namespace peft::cli {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::error_code ec;
  if (fs::file_size(p, ec) > (16u << 20)) fail(p.string(), " is larger than 16 MiB; not an adapter config");
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("peft convert: cannot read ", p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_synced(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("peft convert: cannot create ", path, ": ", std::strerror(errno));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      ::unlink(path.c_str());
      fail("peft convert: cannot write ", path, ": ", std::strerror(e));
    }
    off += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(path.c_str());
    fail("peft convert: cannot flush ", path, ": ", std::strerror(e));
  }
}

std::string staging(const fs::path& final) {
  static int n = 0;
  std::string name = ".";
  name += final.filename().string();
  name += ".converting." + std::to_string(::getpid()) + "." + std::to_string(n++);
  return (final.parent_path() / name).string();
}

DType parse_dtype(const std::string& s) {
  if (s == "float32" || s == "f32" || s == "fp32") return DType::float32;
  if (s == "bfloat16" || s == "bf16") return DType::bfloat16;
  if (s == "float16" || s == "f16" || s == "fp16") return DType::float16;
  throw UsageError{"--dtype must be float32, bfloat16 or float16, got '" + s + "'"};
}

int run_convert_gguf(const Args& a) {
  if (a.positional.size() != 1) throw UsageError{"expects one adapter folder DIR"};
  LoraGGUFOptions o;
  if (a.has("dtype")) o.dtype = parse_dtype(a.get("dtype"));
  const std::string out = a.required("out"), base = a.required("base");
  LoraGGUFReport r = convert_lora_to_gguf(a.positional[0], base, out, o);
  std::printf("convert: wrote %s: llama.cpp LoRA adapter for %s, %zu modules (%zu lora_b rescaled for rsLoRA / "
              "alpha or rank patterns, %zu with llama's q/k row order), adapter.lora.alpha %g, %s\n",
              out.c_str(), r.architecture.c_str(), r.modules, r.rescaled, r.permuted, double(r.alpha),
              dtype_name(o.dtype));
  return 0;
}

int run_convert(const std::vector<std::string>& argv) {
  Args a(argv, {"dtype", "out", "to", "base"});
  if (a.help) {
    std::printf(
        "usage: peft convert DIR --dtype float32|bfloat16|float16 --out DIR2\n"
        "       peft convert DIR --to gguf --base MODEL.gguf --out ADAPTER.gguf [--dtype float32|float16|bfloat16]\n"
        "\n"
        "  The first form writes the adapter folder DIR (and its named sub-folders) to DIR2 with every\n"
        "  floating tensor converted (PEFT's layout and metadata kept; adapter_config.json copied as\n"
        "  is). All files are written under temporary names first and renamed into place together,\n"
        "  so a failure leaves DIR2 as it was. DIR2 may be DIR.\n"
        "\n"
        "  --to gguf writes the LoRA adapter DIR as llama.cpp's LoRA adapter file (what\n"
        "  convert_lora_to_gguf.py writes; use it with llama-cli / llama-server / llama-perplexity\n"
        "  --lora ADAPTER.gguf on MODEL.gguf). MODEL.gguf is the base the adapter was trained on\n"
        "  (llama or qwen2): it gives the architecture, the tensor names (blk.N.attn_q.weight ...)\n"
        "  and shapes, and llama's q/k row order. The file holds adapter.lora.alpha = lora_alpha and\n"
        "  per module lora_a [r, in] / lora_b [out, r] (float32 unless --dtype); llama.cpp adds\n"
        "  (alpha/r)*B*A, so lora_b is rescaled where PEFT's scale differs (use_rslora, alpha_pattern,\n"
        "  rank_pattern): the same delta for every module. Refused with the reason: DoRA, lora_bias,\n"
        "  trained biases, modules_to_save, trainable tokens, other methods (IA3, AdaLoRA), LoRA\n"
        "  variants, initialisations that change the base (pissa, olora, corda, loftq, lora_ga), and\n"
        "  modules llama.cpp has no tensor for (lm_head or embed_tokens of a tied base). Written\n"
        "  atomically.\n");
    return 0;
  }
  if (a.has("to")) {
    if (a.get("to") != "gguf") throw UsageError{"--to must be gguf, got '" + a.get("to") + "'"};
    return run_convert_gguf(a);
  }
  if (a.has("base")) throw UsageError{"--base is for --to gguf"};
  if (a.positional.size() != 1) throw UsageError{"expects one adapter folder DIR"};
  DType dt = parse_dtype(a.required("dtype"));
  fs::path src = a.positional[0], dst = a.required("out");
  std::error_code ec;
  if (!fs::is_directory(src, ec)) fail("peft convert: ", src.string(), " is not a folder");
  std::vector<std::pair<fs::path, fs::path>> dirs;  // (from, to)
  if (fs::exists(src / "adapter_config.json")) dirs.emplace_back(src, dst);
  std::vector<fs::path> subs;
  for (const auto& e : fs::directory_iterator(src))
    if (e.is_directory() && fs::exists(e.path() / "adapter_config.json")) subs.push_back(e.path());
  std::sort(subs.begin(), subs.end());
  for (const auto& s : subs) dirs.emplace_back(s, dst / s.filename());
  if (dirs.empty()) fail("peft convert: ", src.string(), " holds no adapter_config.json (nor sub-folders with one)");

  struct Staged {
    std::string tmp, final;
  };
  std::vector<Staged> staged;
  size_t tensors = 0;
  try {
    for (const auto& [from, to] : dirs) {
      std::string config = slurp(from / "adapter_config.json");
      (void)config_from_json(config);  // refuse a broken config before writing anything
      fs::path wfrom = from / "adapter_model.safetensors";
      if (!fs::exists(wfrom)) fail("peft convert: ", wfrom.string(), " does not exist");
      fs::create_directories(to, ec);
      if (ec) fail("peft convert: cannot create folder ", to.string(), ": ", ec.message());
      io::LoadOptions lo;
      lo.convert = true;
      lo.dtype = dt;
      StateDict sd = io::load_safetensors(wfrom.string(), lo);
      tensors += sd.size();
      io::SaveOptions so;
      so.metadata = io::read_safetensors_metadata(wfrom.string());
      fs::path wto = to / "adapter_model.safetensors";
      staged.push_back({staging(wto), wto.string()});
      io::save_safetensors(staged.back().tmp, sd, so);
      fs::path cto = to / "adapter_config.json";
      staged.push_back({staging(cto), cto.string()});
      write_synced(staged.back().tmp, config);
    }
    for (Staged& st : staged) {
      if (::rename(st.tmp.c_str(), st.final.c_str()) != 0)
        fail("peft convert: cannot rename ", st.tmp, " to ", st.final, ": ", std::strerror(errno));
      st.tmp.clear();
    }
  } catch (...) {
    for (const Staged& st : staged)
      if (!st.tmp.empty()) ::unlink(st.tmp.c_str());
    throw;
  }
  std::printf("convert: wrote %zu adapter(s), %zu tensors as %s to %s\n", dirs.size(), tensors, dtype_name(dt),
              dst.string().c_str());
  return 0;
}

Registrar reg({"convert", "rewrite an adapter folder in another dtype, or as llama.cpp's LoRA GGUF (--to gguf)",
               run_convert});

}  // namespace
}  // namespace peft::cli
