#include "adapters/folder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "adapters/core/detail.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace peft {

namespace fs = std::filesystem;
static const std::string kPrefix = "base_model.model.";

// Writes text to a new file `path` (which must not exist) and fsyncs it; removes it on failure.
static void write_new_file_synced(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("save_pretrained: cannot create ", path, ": ", std::strerror(errno));
  auto fail_removing = [&](const char* what, int e) {
    ::close(fd);
    ::unlink(path.c_str());
    fail("save_pretrained: cannot ", what, " ", path, ": ", std::strerror(e),
         "; the existing adapter files were left unchanged");
  };
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_removing("write", errno);
    }
    off += size_t(n);
  }
  if (::fsync(fd) != 0) fail_removing("flush", errno);
  if (::close(fd) != 0) {
    int e = errno;
    ::unlink(path.c_str());
    fail("save_pretrained: cannot close ", path, ": ", std::strerror(e),
         "; the existing adapter files were left unchanged");
  }
}

// A hidden name next to `final` for a file being prepared (unique across threads and processes).
static std::string staging_name(const fs::path& final) {
  io::remove_stale_temp_files(final.parent_path().string(), final.filename().string());  // a killed save's
  return (final.parent_path() / ("." + final.filename().string() + ".saving." + io::unique_temp_suffix())).string();
}

using io::fsync_dir;

void save_pretrained(const nn::Module& model, const std::string& dir,
                     const std::vector<std::string>& adapter_names,
                     const SavePretrainedOptions& opts) {
  ModelReadGuard lock(model);  // see adapters/model_lock.h
  const PeftState* state = peft_state(model);
  if (!state) fail("save_pretrained: the model has no adapters (call inject_adapter_in_model first)");
  std::vector<std::string> names = adapter_names.empty() ? state->adapter_names() : adapter_names;
  if (opts.dtype && !is_floating(*opts.dtype))
    fail("save_pretrained: dtype must be floating, got ", dtype_name(*opts.dtype));
  for (const std::string& name : names)
    if (!state->find(name)) fail("save_pretrained: no adapter named '", name, "' in the model");
  // Every file is first written in full (and fsync'ed) under a hidden staging name; only
  // then are they renamed into place, back to back, weights before config. A failure while
  // writing leaves the existing folder untouched; a crash leaves at worst a staging file.
  struct Staged {
    std::string tmp, final;
  };
  std::vector<Staged> staged;
  std::vector<std::string> dirs;
  try {
    for (const std::string& name : names) {
      PeftConfigPtr cfg = state->find(name);
      fs::path sub = name == "default" ? fs::path(dir) : fs::path(dir) / name;
      std::error_code ec;
      fs::create_directories(sub, ec);
      if (ec) fail("save_pretrained: cannot create folder ", sub.string(), ": ", ec.message());
      dirs.push_back(sub.string());
      for (const char* f : {"adapter_model.safetensors", "adapter_config.json"})
        if (fs::is_directory(sub / f))
          fail("save_pretrained: ", (sub / f).string(), " is a folder; cannot write the adapter there");
      StateDict sd = get_peft_model_state_dict(model, name);
      StateDict prefixed;
      for (const auto& [k, t] : sd) prefixed.set(kPrefix + k, t);
      io::SaveOptions so;
      so.metadata = {{"format", "pt"}};
      if (opts.dtype) {
        so.convert = true;
        so.dtype = *opts.dtype;
      }
      fs::path weights = sub / "adapter_model.safetensors";
      staged.push_back({staging_name(weights), weights.string()});
      io::save_safetensors(staged.back().tmp, prefixed, so);
      PeftConfigPtr saved = cfg->clone();
      saved->inference_mode = true;  // as PeftModel.save_pretrained writes it
      if (!saved->task_type && saved->auto_mapping.is_null())
        saved->auto_mapping = {{"base_model_class", model.type_name()}, {"parent_library", "peft.cpp"}};
      fs::path config = sub / "adapter_config.json";
      staged.push_back({staging_name(config), config.string()});
      write_new_file_synced(staged.back().tmp, saved->to_json_string());
    }
    for (Staged& st : staged) {
      if (::rename(st.tmp.c_str(), st.final.c_str()) != 0)
        fail("save_pretrained: cannot rename ", st.tmp, " to ", st.final, ": ", std::strerror(errno));
      st.tmp.clear();
    }
  } catch (...) {
    for (const Staged& st : staged)
      if (!st.tmp.empty()) ::unlink(st.tmp.c_str());
    throw;
  }
  for (const std::string& d : dirs) fsync_dir(d);
}

// adapter_config.json is a few KiB; anything this large is not one (and a FIFO or a device
// would never end), so both are refused before reading.
constexpr uint64_t kMaxConfigBytes = 16ull << 20;

static std::string read_text(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail("cannot read ", path, " (is this a PEFT adapter folder?)");
  if (!fs::is_regular_file(st)) fail("cannot read ", path, ": not a regular file");
  uint64_t size = fs::file_size(path, ec);
  if (ec) fail("cannot read ", path, ": ", ec.message());
  if (size > kMaxConfigBytes)
    fail(path, " is ", size, " bytes; an adapter_config.json is at most ", kMaxConfigBytes,
         " bytes (is this the right file?)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", path, " (is this a PEFT adapter folder?)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The dtype of the model's first floating parameter (tree order), float32 when none.
static std::optional<DType> first_float_dtype(const nn::Module& m) {
  for (const auto& [n, p] : m.own_parameters())
    if (p.defined() && is_floating(p.dtype())) return p.dtype();
  for (const auto& [n, c] : m.children())
    if (auto d = first_float_dtype(*c)) return d;
  return std::nullopt;
}

static DType model_float_dtype(const nn::Module& model) { return first_float_dtype(model).value_or(DType::float32); }

namespace {

// What injecting and loading an adapter may change on a model, recorded so that a failed
// load_adapter can put it back: the module tree (injection swaps targets for wrappers),
// requires_grad (injection freezes the base model), training flags and the adapter
// bookkeeping. Parameter values of existing modules are never written before the load has
// been validated (nn::Module::load_state_dict), so they need no copy.
class ModelUndo {
 public:
  explicit ModelUndo(nn::Module& model) : model_(model) {
    training_.emplace_back(&model, model.is_training());
    // depth first, parents before children; adapter dicts hold nothing injection replaces
    for (auto& [name, m] : detail::host_modules(model))
      if (!name.empty()) {
        modules_.emplace_back(name, m);
        training_.emplace_back(m.get(), m->is_training());
      }
    for (auto& p : detail::all_parameters(model)) grads_.emplace_back(p, p.requires_grad());
    if (const PeftState* st = peft_state(model)) state_ = *st;
  }

  void restore(const std::string& adapter) noexcept {
    // Drop the adapter's tensors from tuner layers / wrappers that existed before (other
    // adapters' layers keep theirs); new wrappers go away with the module tree below.
    try {
      for (auto& [n, t] : tuner_layers(model_))
        if (t->has_adapter(adapter)) t->delete_adapter(adapter);
      for (auto& [n, w] : modules_to_save_wrappers(model_))
        if (w->modules_to_save().has_child(adapter)) w->delete_adapter(adapter);
    } catch (...) {
    }
    // Parents come before children, so each path is looked up in an already restored tree.
    for (auto& [name, m] : modules_) {
      try {
        if (model_.get_submodule(name) != m) model_.replace_module(name, m);
      } catch (...) {
      }
    }
    bool training_changed = false;
    for (auto& [m, on] : training_) training_changed |= m->is_training() != on;
    if (training_changed)  // train() recurses; recorded parents-first, so the last write wins
      for (auto& [m, on] : training_) m->train(on);
    for (auto& [p, on] : grads_)
      if (p.requires_grad() != on) p.requires_grad_(on);
    if (!state_) {
      forget_peft_state(model_);
    } else {
      peft_state_or_create(model_) = *state_;
    }
  }

 private:
  nn::Module& model_;
  std::vector<std::pair<std::string, nn::ModulePtr>> modules_;
  std::vector<std::pair<nn::Module*, bool>> training_;
  std::vector<std::pair<Tensor, bool>> grads_;
  std::optional<PeftState> state_;
};

}  // namespace

LoadAdapterResult load_adapter(nn::Module& model, const std::string& dir,
                               const std::string& adapter_name, bool low_cpu_mem_usage) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  if (const PeftState* st = peft_state(model); st && st->find(adapter_name))
    fail("load_adapter: the model already has an adapter named '", adapter_name, "'");
  LoadAdapterResult r;
  std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  r.config = config_from_json(read_text(cfg_path));
  r.config->inference_mode = false;
  for (auto it = r.config->extra.begin(); it != r.config->extra.end(); ++it) r.unknown_config_fields.push_back(it.key());
  if (!r.unknown_config_fields.empty())
    warn("load_adapter: " + cfg_path + " has fields peft.cpp does not know (kept, not used): " +
         py_list(r.unknown_config_fields));
  // Read and validate the weights before touching the model.
  io::LoadOptions lo;
  lo.convert = true;
  lo.dtype = model_float_dtype(model);
  StateDict sd = io::load_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), lo);
  ModelUndo undo(model);
  try {
    inject_adapter_in_model(*r.config, model, adapter_name, low_cpu_mem_usage);
    nn::LoadResult out = detail::load_adapter_state(model, sd, adapter_name, low_cpu_mem_usage);
    const std::string prefix = method_for(r.config->peft_type).prefix;
    for (const auto& k : out.missing_keys)
      if (k.find(prefix) != std::string::npos && k.find(adapter_name) != std::string::npos)
        r.missing_keys.push_back(k);
    r.unexpected_keys = out.unexpected_keys;
  } catch (...) {
    undo.restore(adapter_name);  // no half-loaded adapter stays behind
    throw;
  }
  return r;
}

}  // namespace peft
