#include "adapters/folder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/safetensors.h"

namespace peft {

namespace fs = std::filesystem;
static const std::string kPrefix = "base_model.model.";

// Writes text to path through a temporary file in the same folder + rename.
static void write_file_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot write ", tmp, ": ", std::strerror(errno));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("cannot write ", tmp, ": ", std::strerror(e));
    }
    off += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("cannot flush ", tmp, ": ", std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail("cannot rename ", tmp, " to ", path, ": ", std::strerror(e));
  }
}

void save_pretrained(const nn::Module& model, const std::string& dir,
                     const std::vector<std::string>& adapter_names,
                     const SavePretrainedOptions& opts) {
  const PeftState* state = peft_state(model);
  if (!state) fail("save_pretrained: the model has no adapters (call inject_adapter_in_model first)");
  std::vector<std::string> names = adapter_names.empty() ? state->adapter_names() : adapter_names;
  if (opts.dtype && !is_floating(*opts.dtype))
    fail("save_pretrained: dtype must be floating, got ", dtype_name(*opts.dtype));
  for (const std::string& name : names) {
    PeftConfigPtr cfg = state->find(name);
    if (!cfg) fail("save_pretrained: no adapter named '", name, "' in the model");
    fs::path sub = name == "default" ? fs::path(dir) : fs::path(dir) / name;
    std::error_code ec;
    fs::create_directories(sub, ec);
    if (ec) fail("save_pretrained: cannot create folder ", sub.string(), ": ", ec.message());
    StateDict sd = get_peft_model_state_dict(model, name);
    StateDict prefixed;
    for (const auto& [k, t] : sd) prefixed.set(kPrefix + k, t);
    io::SaveOptions so;
    so.metadata = {{"format", "pt"}};
    if (opts.dtype) {
      so.convert = true;
      so.dtype = *opts.dtype;
    }
    io::save_safetensors((sub / "adapter_model.safetensors").string(), prefixed, so);
    PeftConfigPtr saved = cfg->clone();
    saved->inference_mode = true;  // as PeftModel.save_pretrained writes it
    if (!saved->task_type && saved->auto_mapping.is_null())
      saved->auto_mapping = {{"base_model_class", model.type_name()}, {"parent_library", "peft.cpp"}};
    write_file_atomic((sub / "adapter_config.json").string(), saved->to_json_string());
  }
}

static std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", path, " (is this a PEFT adapter folder?)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

static DType model_float_dtype(const nn::Module& model) {
  for (const auto& [n, p] : model.named_parameters())
    if (is_floating(p.dtype())) return p.dtype();
  return DType::float32;
}

LoadAdapterResult load_adapter(nn::Module& model, const std::string& dir,
                               const std::string& adapter_name, bool low_cpu_mem_usage) {
  if (const PeftState* st = peft_state(model); st && st->find(adapter_name))
    fail("load_adapter: the model already has an adapter named '", adapter_name, "'");
  LoadAdapterResult r;
  std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  r.config = config_from_json(read_text(cfg_path));
  r.config->inference_mode = false;
  // Read and validate the weights before touching the model.
  io::LoadOptions lo;
  lo.convert = true;
  lo.dtype = model_float_dtype(model);
  StateDict sd = io::load_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), lo);
  inject_adapter_in_model(*r.config, model, adapter_name, low_cpu_mem_usage);
  try {
    nn::LoadResult out = set_peft_model_state_dict(model, sd, adapter_name, low_cpu_mem_usage);
    const std::string prefix = method_for(r.config->peft_type).prefix;
    for (const auto& k : out.missing_keys)
      if (k.find(prefix) != std::string::npos && k.find(adapter_name) != std::string::npos)
        r.missing_keys.push_back(k);
    r.unexpected_keys = out.unexpected_keys;
  } catch (...) {
    delete_adapter(model, adapter_name);  // no half-loaded adapter stays behind
    throw;
  }
  return r;
}

}  // namespace peft
