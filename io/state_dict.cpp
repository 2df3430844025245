#include "io/state_dict.h"

#include <algorithm>

namespace peft {

void StateDict::set(const std::string& key, const Tensor& t) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    items_[it->second].second = t;
    return;
  }
  index_.emplace(key, items_.size());
  items_.emplace_back(key, t);
}

const Tensor& StateDict::at(const std::string& key) const {
  if (const Tensor* t = find(key)) return *t;
  std::string msg = "StateDict has no key '" + key + "'";
  if (items_.empty()) {
    msg += " (the state dict is empty)";
  } else {
    // Name a few keys so a prefix mismatch ("base_model.model.") is easy to spot.
    msg += "; it holds " + std::to_string(items_.size()) + " keys, e.g. ";
    size_t shown = std::min<size_t>(items_.size(), 3);
    for (size_t i = 0; i < shown; ++i) msg += (i ? ", '" : "'") + items_[i].first + "'";
    if (items_.size() > shown) msg += ", ...";
  }
  throw Error(msg);
}

Tensor* StateDict::find(const std::string& key) {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

const Tensor* StateDict::find(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

bool StateDict::erase(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  size_t pos = it->second;
  index_.erase(it);
  items_.erase(items_.begin() + std::ptrdiff_t(pos));
  for (size_t i = pos; i < items_.size(); ++i) index_[items_[i].first] = i;
  return true;
}

std::vector<std::string> StateDict::keys() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto& it : items_) out.push_back(it.first);
  return out;
}

}  // namespace peft
