// Reference-side helper, not part of peft.cpp: dequantizes every tensor of a GGUF file with
// ggml's own to_float (built by scripts/build_llama_cpp.sh), writing OUTDIR/<name>.f32
// (float32 little-endian, ggml's element order), so the goldens of peft.cpp's dequantization
// are checked against llama.cpp as well as gguf-py. Usage: peft-ggml-dequant FILE.gguf OUTDIR
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ggml.h"
#include "gguf.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s FILE.gguf OUTDIR\n", argv[0]);
    return 2;
  }
  ggml_context* meta = nullptr;
  gguf_init_params params{/*no_alloc=*/false, &meta};
  gguf_context* g = gguf_init_from_file(argv[1], params);
  if (!g) return 1;
  for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
    const char* name = gguf_get_tensor_name(g, i);
    ggml_tensor* t = ggml_get_tensor(meta, name);
    const int64_t n = ggml_nelements(t);
    std::vector<float> out(static_cast<size_t>(n));
    const auto* traits = ggml_get_type_traits(t->type);
    if (t->type == GGML_TYPE_F32) {
      std::memcpy(out.data(), t->data, size_t(n) * 4);
    } else if (traits->to_float) {
      traits->to_float(t->data, out.data(), n);
    } else {
      std::fprintf(stderr, "%s: no to_float for %s\n", name, ggml_type_name(t->type));
      continue;
    }
    std::FILE* f = std::fopen((std::string(argv[2]) + "/" + name + ".f32").c_str(), "wb");
    if (!f) return 1;
    std::fwrite(out.data(), 4, out.size(), f);
    std::fclose(f);
  }
  gguf_free(g);
  ggml_free(meta);
  return 0;
}
