#include "nn/serialize.h"

#include "io/safetensors.h"

namespace peft::nn {

void save_state_dict(const Module& module, const std::string& path,
                     const std::map<std::string, std::string>& metadata) {
  io::SaveOptions opts;
  opts.metadata = metadata;
  opts.metadata.emplace("format", "pt");
  io::save_safetensors(path, module.state_dict(), opts);
}

LoadResult load_state_dict(Module& module, const std::string& path, bool strict, bool assign) {
  StateDict sd = io::load_safetensors(path);
  return module.load_state_dict(sd, strict, assign);
}

}  // namespace peft::nn
