// StateDict: tensors by name, in insertion order (PyTorch's OrderedDict).
#pragma once
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace peft {

class StateDict {
 public:
  using Item = std::pair<std::string, Tensor>;

  // Inserts or replaces (a replaced key keeps its position).
  void set(const std::string& key, const Tensor& t);
  bool contains(const std::string& key) const { return index_.count(key) != 0; }
  // Throws peft::Error naming the key when absent.
  const Tensor& at(const std::string& key) const;
  Tensor* find(const std::string& key);
  const Tensor* find(const std::string& key) const;
  bool erase(const std::string& key);
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  std::vector<std::string> keys() const;
  const std::vector<Item>& items() const { return items_; }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace peft
