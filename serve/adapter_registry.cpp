#include "serve/adapter_registry.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>

#include "adapters/folder.h"
#include "adapters/tuner.h"
#include "serve/errors.h"

namespace peft::serve {

namespace fs = std::filesystem;

bool valid_adapter_name(const std::string& name) {
  // "__base__" is the mixed batch's name for "no adapter"
  if (name.empty() || name.size() > 128 || name == "." || name == ".." || name == "__base__") return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

namespace {

// PEFT's warnings on the second adapter of a model and on deleting the active one are what a
// server does all day; anything else still reaches stderr.
struct QuietAdapterWarnings {
  ScopedWarningHandler h{[](const std::string& msg) {
    if (msg.find("multiple adapters") == std::string::npos && msg.find("which is now deleted") == std::string::npos)
      std::fprintf(stderr, "peft serve: %s\n", msg.c_str());
  }};
};

bool inside(const fs::path& p, const fs::path& dir) {
  auto [d, q] = std::mismatch(dir.begin(), dir.end(), p.begin(), p.end());
  return d == dir.end();
}

}  // namespace

AdapterRegistry::AdapterRegistry(nn::Module& model, std::string adapter_dir, size_t capacity,
                                 std::vector<std::string> pinned)
    : model_(model), capacity_(std::max<size_t>(1, capacity)), pinned_(std::move(pinned)) {
  if (!adapter_dir.empty()) {
    std::error_code ec;
    fs::path d = fs::canonical(adapter_dir, ec);
    if (ec || !fs::is_directory(d)) throw std::runtime_error("--adapter-dir " + adapter_dir + " is not a directory");
    dir_ = d.string();
  }
  if (pinned_.size() > capacity_)
    throw std::runtime_error(std::to_string(pinned_.size()) + " pinned adapters but --max-loaded-adapters " +
                             std::to_string(capacity_));
}

// The canonical form of `path` (relative: to the directory), which must lie inside the directory
// together with the adapter files it holds.
std::string AdapterRegistry::confined(const std::string& path, const std::string& what) const {
  if (dir_.empty()) throw ServeError(404, "no adapter directory: this server was started without --adapter-dir", what);
  fs::path p = fs::path(path).is_absolute() ? fs::path(path) : fs::path(dir_) / path;
  std::error_code ec;
  fs::path c = fs::canonical(p, ec);
  if (ec) throw ServeError(404, "adapter folder " + path + " does not exist", what);
  if (!inside(c, fs::path(dir_)) || c == fs::path(dir_))
    throw ServeError(403, "adapter path " + path + " is outside the adapter directory", what);
  if (!fs::is_regular_file(c / "adapter_config.json"))
    throw ServeError(404, "adapter folder " + path + " holds no adapter_config.json", what);
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}) {
    if (!fs::exists(c / f)) continue;
    fs::path fc = fs::canonical(c / f, ec);
    if (ec || !inside(fc, fs::path(dir_)))
      throw ServeError(403, "adapter file " + (c / f).string() + " links outside the adapter directory", what);
  }
  return c.string();
}

std::string AdapterRegistry::folder(const std::string& name) {
  if (!valid_adapter_name(name))
    throw ServeError(400, "invalid adapter name '" + name + "' (letters, digits, '.', '_', '-')", "model");
  auto it = folders_.find(name);
  if (it != folders_.end()) return it->second;
  if (dir_.empty() || !fs::exists(fs::path(dir_) / name / "adapter_config.json"))
    throw ServeError(404, "The adapter '" + name + "' does not exist", "model", "model_not_found");
  const std::string c = confined(name, "model");
  folders_[name] = c;
  return c;
}

std::vector<AdapterRegistry::Entry> AdapterRegistry::list() {
  if (!dir_.empty()) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
      const std::string n = e.path().filename().string();
      if (!folders_.count(n) && valid_adapter_name(n) && fs::exists(e.path() / "adapter_config.json")) {
        try {
          folders_[n] = confined(n, "");
        } catch (const ServeError&) {  // a folder linking outside: not offered
        }
      }
    }
  }
  std::vector<Entry> out;
  for (const auto& [n, f] : folders_) {
    Entry e{n, f};
    e.loaded = std::find(lru_.begin(), lru_.end(), n) != lru_.end();
    e.pinned = std::find(pinned_.begin(), pinned_.end(), n) != pinned_.end();
    out.push_back(e);
  }
  return out;
}

AdapterRegistry::Entry AdapterRegistry::add(const std::string& name, const std::string& path) {
  if (!valid_adapter_name(name))
    throw ServeError(400, "invalid adapter name '" + name + "' (letters, digits, '.', '_', '-')", "name");
  const std::string c = confined(path, "path");
  auto it = folders_.find(name);
  if (it != folders_.end() && it->second != c)
    throw ServeError(409, "adapter '" + name + "' already names " + it->second, "name");
  folders_[name] = c;
  return Entry{name, c, std::find(lru_.begin(), lru_.end(), name) != lru_.end(),
               std::find(pinned_.begin(), pinned_.end(), name) != pinned_.end()};
}

void AdapterRegistry::remove(const std::string& name) {
  if (!folders_.count(name)) throw ServeError(404, "The adapter '" + name + "' does not exist", "name", "model_not_found");
  if (std::find(pinned_.begin(), pinned_.end(), name) != pinned_.end())
    throw ServeError(409, "adapter '" + name + "' is pinned (--pin)", "name");
  auto it = std::find(lru_.begin(), lru_.end(), name);
  if (it != lru_.end()) {
    QuietAdapterWarnings quiet;
    delete_adapter(model_, name);
    lru_.erase(it);
  }
  folders_.erase(name);
}

void AdapterRegistry::ensure_loaded(const std::vector<std::string>& names) {
  std::vector<std::string> want;
  for (const auto& n : names)
    if (std::find(want.begin(), want.end(), n) == want.end()) want.push_back(n);
  if (want.size() > capacity_)
    throw ServeError(503, "one batch needs " + std::to_string(want.size()) + " adapters but at most " +
                              std::to_string(capacity_) + " can be loaded (--max-loaded-adapters)");
  for (const auto& n : want) {
    auto it = std::find(lru_.begin(), lru_.end(), n);
    if (it != lru_.end()) {
      lru_.splice(lru_.begin(), lru_, it);  // most recently used
      continue;
    }
    const std::string f = folder(n);
    // make room: the least recently used, not pinned, not wanted by this batch
    while (lru_.size() >= capacity_) {
      auto victim = lru_.end();
      for (auto v = lru_.end(); v != lru_.begin();) {
        --v;
        if (std::find(pinned_.begin(), pinned_.end(), *v) == pinned_.end() &&
            std::find(want.begin(), want.end(), *v) == want.end()) {
          victim = v;
          break;
        }
      }
      if (victim == lru_.end()) throw ServeError(503, "every loaded adapter is pinned or in use; raise --max-loaded-adapters");
      QuietAdapterWarnings quiet;
      delete_adapter(model_, *victim);
      lru_.erase(victim);
      ++evictions_;
    }
    {
      QuietAdapterWarnings quiet;
      try {
        load_adapter(model_, f, n, /*low_cpu_mem_usage=*/true);  // no random init the file overwrites
      } catch (const std::exception& e) {
        throw ServeError(500, "loading adapter '" + n + "' from " + f + " failed: " + e.what(), "model");
      }
    }
    lru_.push_front(n);
    ++loads_;
  }
}

}  // namespace peft::serve
