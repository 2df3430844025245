// Reference-side helper, not part of peft.cpp: evaluates token ids with llama.cpp (built by
// scripts/build_llama_cpp.sh) and writes the logits of every position, so that tests can compare
// peft.cpp's GGUF forward against llama.cpp's. Usage:
//   peft-llama-logits MODEL.gguf IDS.txt OUT.f32 [THREADS] [f32kv]
// f32kv: keep the KV cache in float32 (llama.cpp's default is float16), to compare without
// that rounding.
// IDS.txt: whitespace-separated token ids, evaluated as one sequence from position 0.
// OUT.f32: float32 little-endian [n_ids, n_vocab], row-major. PEFT_GREEDY=N also prints the N
// tokens greedy decoding continues with.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "llama.h"

// PEFT_DUMP_TENSORS="attn_norm-0,Vcur-0": those graph tensors (float32) are written to
// OUT.<name>.f32 as they are computed, for layer-by-layer comparisons.
static std::string g_out, g_dump;
static bool dump_tensor(struct ggml_tensor* t, bool ask, void*) {
  const std::string name = ggml_get_name(t);
  const bool want = !g_dump.empty() && ("," + g_dump + ",").find("," + name + ",") != std::string::npos;
  if (ask) return want;
  if (want && t->type == GGML_TYPE_F32 && ggml_is_contiguous(t)) {
    std::FILE* f = std::fopen((g_out + "." + name + ".f32").c_str(), "wb");
    if (f) {
      std::fwrite(t->data, 1, ggml_nbytes(t), f);
      std::fclose(f);
    }
  }
  return true;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.gguf IDS.txt OUT.f32 [THREADS]\n", argv[0]);
    return 2;
  }
  std::vector<llama_token> ids;
  {
    std::ifstream in(argv[2]);
    long v;
    while (in >> v) ids.push_back(llama_token(v));
  }
  if (ids.empty()) {
    std::fprintf(stderr, "no token ids in %s\n", argv[2]);
    return 1;
  }
  const int threads = argc > 4 ? std::atoi(argv[4]) : 1;
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.use_extra_bufts = false;  // no weight repacking (this VM's AMX faults)
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) return 1;
  llama_context_params cp = llama_context_default_params();
  const int n_greedy = std::getenv("PEFT_GREEDY") ? std::atoi(std::getenv("PEFT_GREEDY")) : 0;
  cp.n_ctx = uint32_t(ids.size() + size_t(n_greedy));
  cp.n_batch = uint32_t(ids.size());
  cp.n_ubatch = uint32_t(ids.size());
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  if (argc > 5 && std::string(argv[5]) == "f32kv") {
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  }
  g_out = argv[3];
  if (const char* d = std::getenv("PEFT_DUMP_TENSORS")) {
    g_dump = d;
    cp.cb_eval = dump_tensor;
    cp.cb_eval_user_data = nullptr;
  }
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) return 1;
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  llama_batch batch = llama_batch_init(int32_t(ids.size()), 0, 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    batch.token[i] = ids[i];
    batch.pos[i] = llama_pos(i);
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  batch.n_tokens = int32_t(ids.size());
  if (llama_decode(ctx, batch) != 0) {
    std::fprintf(stderr, "llama_decode failed\n");
    return 1;
  }
  std::FILE* out = std::fopen(argv[3], "wb");
  if (!out) return 1;
  for (size_t i = 0; i < ids.size(); ++i) std::fwrite(llama_get_logits_ith(ctx, int32_t(i)), sizeof(float), size_t(n_vocab), out);
  std::fclose(out);
  // PEFT_GREEDY=N: then N greedy tokens, one decode call each (as llama-simple), printed
  if (const char* g = std::getenv("PEFT_GREEDY")) {
    const int n = std::atoi(g);
    llama_batch one = llama_batch_init(1, 0, 1);
    const float* last = llama_get_logits_ith(ctx, int32_t(ids.size()) - 1);
    for (int i = 0; i < n; ++i) {
      int best = 0;
      for (int v = 1; v < n_vocab; ++v)
        if (last[v] > last[best]) best = v;
      std::printf("%s%d", i ? " " : "", best);
      one.token[0] = best;
      one.pos[0] = llama_pos(ids.size() + size_t(i));
      one.n_seq_id[0] = 1;
      one.seq_id[0][0] = 0;
      one.logits[0] = 1;
      one.n_tokens = 1;
      if (llama_decode(ctx, one) != 0) return 1;
      last = llama_get_logits_ith(ctx, 0);
    }
    std::printf("\n");
    llama_batch_free(one);
  }
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
