// The adapters a server knows — folders under its adapter directory, found when first named or
// registered by POST /v1/adapters — and which of them are loaded into the model: at most
// `capacity` at once, least recently used evicted first, pinned ones never.
//
// Paths are confined to the adapter directory: a name is one path component of
// [A-Za-z0-9._-] (not "." or ".."), a registered path must resolve inside the directory, and so
// must the folder's files after following symlinks (ServeError 403 otherwise).
//
// Not thread-safe on its own: the server calls it with its model mutex held (loading and
// evicting change the model).
#pragma once
#include <cstdint>
#include <list>
#include <map>
#include <string>
#include <vector>

#include "nn/module.h"

namespace peft::serve {

class AdapterRegistry {
 public:
  // adapter_dir "" : no directory (every adapter request is a 404).
  AdapterRegistry(nn::Module& model, std::string adapter_dir, size_t capacity, std::vector<std::string> pinned);

  // The folder of adapter `name` (registering DIR/name when it holds adapter_config.json);
  // ServeError 404 when there is none, 400 for a malformed name, 403 outside the directory.
  std::string folder(const std::string& name);
  // Every known adapter: the directory's sub-folders with adapter_config.json and the registered
  // ones, sorted; `loaded` says which are in the model now.
  struct Entry {
    std::string name, folder;
    bool loaded = false, pinned = false;
  };
  std::vector<Entry> list();
  // POST /v1/adapters: `path` relative to the directory or absolute inside it. 409 if the name is
  // taken by another folder.
  Entry add(const std::string& name, const std::string& path);
  // DELETE /v1/adapters/NAME: unloads it (if loaded) and forgets it; 404 unknown, 409 pinned.
  void remove(const std::string& name);
  // Loads every adapter of `names` that is not loaded, evicting least recently used unpinned
  // ones outside `names` to stay within the capacity, and marks all of `names` used. More
  // distinct names than the capacity: ServeError 503 naming both numbers.
  void ensure_loaded(const std::vector<std::string>& names);

  int64_t loads() const { return loads_; }
  int64_t evictions() const { return evictions_; }
  size_t loaded_count() const { return lru_.size(); }
  const std::string& dir() const { return dir_; }

 private:
  std::string confined(const std::string& path, const std::string& what) const;
  nn::Module& model_;
  std::string dir_;  // canonical, "" when none
  size_t capacity_;
  std::vector<std::string> pinned_;
  std::map<std::string, std::string> folders_;  // name -> canonical folder
  std::list<std::string> lru_;                  // loaded, most recently used first
  int64_t loads_ = 0, evictions_ = 0;
};

// Whether `name` is a valid adapter name (one path component of [A-Za-z0-9._-], 1-128 chars,
// not "." or "..").
bool valid_adapter_name(const std::string& name);

}  // namespace peft::serve
