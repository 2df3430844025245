// `peft convert DIR --dtype bf16 --out DIR2`: rewrites an adapter folder (and its named
// sub-folders) with its floating tensors in another dtype; configs are copied unchanged.
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

int run_convert(const std::vector<std::string>& argv) {
  Args a(argv, {"dtype", "out"});
  if (a.help) {
    std::printf(
        "usage: peft convert DIR --dtype float32|bfloat16|float16 --out DIR2\n"
        "  Writes the adapter folder DIR (and its named sub-folders) to DIR2 with every floating\n"
        "  tensor converted (PEFT's layout and metadata kept; adapter_config.json copied as is).\n"
        "  All files are written under temporary names first and renamed into place together,\n"
        "  so a failure leaves DIR2 as it was. DIR2 may be DIR.\n");
    return 0;
  }
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

Registrar reg({"convert", "rewrite an adapter folder in another dtype (float32, bfloat16, float16)", run_convert});

}  // namespace
}  // namespace peft::cli
