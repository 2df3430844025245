// Commands on Hugging Face model folders with text: `peft embed` (sentence embeddings) and
// `peft generate --model` (decoders; `peft generate --base` is the character-level model's).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/chat_template.h"
#include "io/safetensors.h"
#include "nn/transformers/perplexity.h"
#include "nn/transformers/generate.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/cli.h"
#include "train/progress.h"
#include "tools/text_commands.h"
#include "nn/transformers/text_model.h"

namespace peft::cli {

namespace fs = std::filesystem;

// Loads adapters DIR... under their folder names (adapter0, adapter1... when names clash).
std::vector<std::string> load_adapter_folders(nn::Module& model, const std::vector<std::string>& dirs) {
  std::vector<std::string> names;
  ScopedWarningHandler keep_others([](const std::string& msg) {
    if (msg.find("multiple adapters") == std::string::npos) std::fprintf(stderr, "peft warning: %s\n", msg.c_str());
  });
  for (size_t i = 0; i < dirs.size(); ++i) {
    std::string name = fs::path(dirs[i]).filename().string();
    if (name.empty()) name = fs::path(dirs[i]).parent_path().filename().string();
    for (char& c : name)
      if (c == '.') c = '_';
    if (name.empty() || std::find(names.begin(), names.end(), name) != names.end())
      name = "adapter" + std::to_string(i);
    load_adapter(model, dirs[i], name);
    names.push_back(name);
  }
  return names;
}

// --dtype f32|bf16|f16 (a GGUF model's quantized weights are dequantized; else kept).
nn::PretrainedOptions model_options(const Args& a) {
  nn::PretrainedOptions o;
  if (!a.has("dtype")) return o;
  const std::string d = a.get("dtype");
  if (d == "f32" || d == "float32") o.dtype = DType::float32;
  else if (d == "bf16" || d == "bfloat16") o.dtype = DType::bfloat16;
  else if (d == "f16" || d == "float16") o.dtype = DType::float16;
  else throw UsageError{"--dtype must be f32, bf16 or f16, got '" + d + "'"};
  return o;
}

// --kv-cache f16|f32 (GGUF models: llama.cpp's KV-cache type; default f16 as llama.cpp).
void apply_kv_cache_option(const Args& a, nn::PretrainedOptions& o) {
  if (!a.has("kv-cache")) return;
  const std::string k = a.get("kv-cache");
  if (k == "f16" || k == "float16") o.kv_cache_dtype = DType::float16;
  else if (k == "f32" || k == "float32") o.kv_cache_dtype = DType::float32;
  else if (k == "bf16" || k == "bfloat16") o.kv_cache_dtype = DType::bfloat16;
  else throw UsageError{"--kv-cache must be f16, f32 or bf16, got '" + k + "'"};
}

void apply_threads_option(const Args& a) {
  if (!a.has("threads")) return;
  const int64_t n = a.get_int("threads", 0);
  if (n < 1 || n > 1024) throw UsageError{"--threads must be between 1 and 1024"};
  set_num_threads(int(n));
}

namespace {

std::string read_text_file(const std::string& path, const char* cmd) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_io(cmd, ": cannot read ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("peft embed: cannot read ", path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  if (out.empty()) fail("peft embed: ", path, " holds no non-empty lines");
  return out;
}

const char* kEmbedHelp = R"(usage: peft embed --model DIR [--adapter DIR] [--pool mean|cls] [--max-length N]
                  (TEXT... | --input FILE) [--out FILE.safetensors] [--batch N]

Sentence embeddings from a Hugging Face encoder folder (config.json, model.safetensors,
tokenizer.json), computed as sentence-transformers does: tokenized with the folder's
tokenizer (padded to the longest text, truncated at sentence_bert_config.json's
max_seq_length), pooled (1_Pooling/config.json: mean or CLS) and L2-normalised when
modules.json lists a Normalize module.

options:
  --adapter DIR     a PEFT adapter folder (LoRA, IA3, AdaLoRA) applied to the model
  --pool mean|cls   override the folder's pooling (default: the folder's, else mean)
  --max-length N    truncate each text to N tokens (default: the folder's max_seq_length)
  --input FILE      one text per line (instead of TEXT arguments)
  --out FILE        write the embeddings [N, H] as float32 "embeddings" in a safetensors file
                    (atomically); without it the first dimensions of each are printed
  --batch N         texts per forward pass (default 32)
)";

int run_embed(const std::vector<std::string>& argv) {
  Args a(argv, {"model", "adapter", "pool", "max-length", "input", "out", "batch"});
  if (a.help) {
    std::printf("%s", kEmbedHelp);
    return 0;
  }
  std::vector<std::string> texts = a.positional;
  if (a.has("input")) {
    if (!texts.empty()) throw UsageError{"give TEXT arguments or --input FILE, not both"};
    texts = read_lines(a.get("input"));
  }
  if (texts.empty()) throw UsageError{"no text given (TEXT... or --input FILE)"};
  const std::string pool = a.get("pool", "");
  if (!pool.empty() && pool != "mean" && pool != "cls") throw UsageError{"--pool must be mean or cls"};
  const int64_t batch = a.get_int("batch", 32);
  if (batch <= 0) throw UsageError{"--batch must be positive"};
  std::optional<size_t> max_len;
  if (a.has("max-length")) {
    const int64_t m = a.get_int("max-length", 0);
    if (m < 2) throw UsageError{"--max-length must be at least 2"};
    max_len = size_t(m);
  }
  nn::TextModel tm = nn::TextModel::load(a.required("model"));
  if (a.has("adapter")) load_adapter_folders(*tm.model, {a.get("adapter")});
  tm.model->eval();
  NoGradGuard ng;
  std::vector<Tensor> parts;
  train::Progress bar("embed", int64_t(texts.size()));
  for (size_t i = 0; i < texts.size(); i += size_t(batch)) {
    std::vector<std::string> chunk(texts.begin() + ptrdiff_t(i),
                                   texts.begin() + ptrdiff_t(std::min(texts.size(), i + size_t(batch))));
    parts.push_back(tm.embed(chunk, pool, max_len));
    if (texts.size() > size_t(batch)) bar.update(int64_t(i + chunk.size()), "texts");
  }
  Tensor e = parts.size() == 1 ? parts[0] : cat(parts, 0);
  if (a.has("out")) {
    StateDict sd;
    sd.set("embeddings", e.to(DType::float32).contiguous());
    io::SaveOptions so;
    so.metadata["model"] = a.get("model");
    if (a.has("adapter")) so.metadata["adapter"] = a.get("adapter");
    io::save_safetensors(a.get("out"), sd, so);
    std::printf("embed: wrote %s: %lld x %lld\n", a.get("out").c_str(), (long long)e.size(0), (long long)e.size(1));
    return 0;
  }
  std::vector<float> v = e.to(DType::float32).contiguous().to_vector<float>();
  const int64_t H = e.size(1);
  for (size_t i = 0; i < texts.size(); ++i) {
    std::printf("[");
    for (int64_t d = 0; d < std::min<int64_t>(H, 8); ++d) std::printf("%s%.5f", d ? ", " : "", v[i * size_t(H) + size_t(d)]);
    std::printf("%s] %s\n", H > 8 ? ", ..." : "", texts[i].c_str());
  }
  return 0;
}

const char* kGenerateHelp = R"(usage: peft generate --model DIR|FILE.gguf [--adapter DIR ...] --prompt TEXT [options]

Continues a prompt with a Hugging Face decoder folder (GPT-2, Llama, Qwen2, Mistral: config.json,
model.safetensors, tokenizer.json) or a llama.cpp GGUF file (llama, qwen2; quantized weights stay
quantized), printing tokens as they come. With several adapters the batch holds one row per
adapter (each row its own adapter: mixed batch) and every continuation is printed at the end.
Defaults come from generation_config.json (GGUF: the file's end-of-generation tokens).

options:
  --adapter DIR        a PEFT adapter folder (repeatable)
  --prompt TEXT        the text to continue (required)
  --chat               the prompt is a user message: render it with the model's chat template
                       (GGUF tokenizer.chat_template) and add the assistant turn's header
  --system TEXT        with --chat: a system message first (else the template's default, if any)
  --dtype f32          dequantize a GGUF model's weights on load (default: keep them quantized)
  --kv-cache f16|f32   a GGUF model's key/value precision in attention, as llama.cpp's KV cache
                       type (default f16, llama.cpp's: its tokens are then followed most closely)
  --threads N          CPU threads (default: PEFT_NUM_THREADS, else all cores)
  --ids                print the prompt's and the generated token ids (one line each) instead
                       of text (for comparisons with llama.cpp)
  --max-new-tokens N   tokens to add (default 32)
  --temperature T      sample with this temperature (> 0); without --temperature, --top-k,
  --top-k K            --top-p or --sample the choice is greedy
  --top-p P
  --sample             sample with the folder's settings
  --seed S             sampling stream (default 0)
)";

}  // namespace

int run_text_generate(const std::vector<std::string>& argv) {
  Args a(argv, {"model", "prompt", "max-new-tokens", "temperature", "top-k", "top-p", "seed", "system", "dtype", "threads",
                "kv-cache"},
         {"sample", "chat", "ids"}, {"adapter"});
  if (a.help) {
    std::printf("%s", kGenerateHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  if (a.has("system") && !a.has("chat")) throw UsageError{"--system needs --chat"};
  apply_threads_option(a);
  const std::string dir = a.required("model");
  const std::string user_prompt = a.required("prompt");
  nn::GenerateOptions o = nn::read_generation_config(dir);
  o.max_new_tokens = a.get_int("max-new-tokens", 32);
  if (o.max_new_tokens < 0) throw UsageError{"--max-new-tokens must be >= 0"};
  const bool sample = a.has("sample") || a.has("temperature") || a.has("top-k") || a.has("top-p");
  o.do_sample = sample;
  if (a.has("temperature")) o.temperature = a.get_double("temperature", 1.0);
  if (a.has("top-k")) o.top_k = a.get_int("top-k", 0);
  if (a.has("top-p")) o.top_p = a.get_double("top-p", 1.0);
  o.seed = uint64_t(a.get_int("seed", 0));
  nn::PretrainedOptions popts = model_options(a);
  apply_kv_cache_option(a, popts);
  nn::TextModel tm = nn::TextModel::load(dir, popts);
  const Tokenizer& tok = tm.tok();
  std::vector<std::string> names = load_adapter_folders(*tm.model, a.all("adapter"));
  std::string prompt = user_prompt;
  if (a.has("chat")) {
    if (tm.chat_template.empty())
      fail("peft generate --chat: ", dir, " has no chat template (tokenizer.chat_template); give the prompt as text without --chat");
    std::vector<ChatMessage> msgs;
    if (a.has("system")) msgs.push_back({"system", a.get("system")});
    msgs.push_back({"user", user_prompt});
    prompt = render_chat(tm.chat_template, msgs, /*add_generation_prompt=*/true);
  }
  Encoding enc = tok.encode_batch({prompt}, true, std::nullopt, std::nullopt)[0];
  if (enc.ids.empty()) fail("peft generate: the prompt encodes to no tokens");
  const int64_t rows = std::max<int64_t>(1, int64_t(names.size()));
  std::vector<int64_t> ids;
  for (int64_t r = 0; r < rows; ++r) ids.insert(ids.end(), enc.ids.begin(), enc.ids.end());
  Tensor input = from_vector(ids, {rows, int64_t(enc.ids.size())});
  if (a.has("ids")) {
    if (rows != 1) throw UsageError{"--ids takes at most one adapter"};
    Tensor out = nn::generate(*tm.model, input, Tensor(), o);
    std::vector<int64_t> all = out.to_vector<int64_t>();
    for (size_t i = 0; i < all.size(); ++i) {
      if (i == enc.ids.size()) std::printf("\n");
      std::printf("%s%lld", i == 0 || i == enc.ids.size() ? "" : " ", (long long)all[i]);
    }
    std::printf("\n");
    return 0;
  }
  if (rows == 1) {
    // stream: decode everything generated so far and print what is new
    std::vector<int64_t> gen;
    std::string shown;
    if (!a.has("chat")) std::printf("%s", prompt.c_str());  // a chat answer stands alone
    std::fflush(stdout);
    nn::generate(*tm.model, input, Tensor(), o, [&](const std::vector<int64_t>& step) {
      gen.push_back(step[0]);
      const std::string text = tok.decode(gen, true);
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
        std::printf("%s", text.c_str() + shown.size());
        std::fflush(stdout);
        shown = text;
      }
    });
    std::printf("\n");
    return 0;
  }
  Tensor out = forward_mixed_batch(*tm.model, names, [&] { return nn::generate(*tm.model, input, Tensor(), o); });
  const int64_t T = out.size(1), P = int64_t(enc.ids.size());
  std::vector<int64_t> all = out.to_vector<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int64_t> gen(all.begin() + r * T + P, all.begin() + (r + 1) * T);
    std::printf("[%s] %s%s\n", names[size_t(r)].c_str(), prompt.c_str(), tok.decode(gen, true).c_str());
  }
  return 0;
}

namespace {

const char* kPerplexityHelp = R"(usage: peft perplexity --model DIR|FILE.gguf --text FILE [--ctx N] [--adapter DIR] [--json]

The perplexity of a decoder over a text file, as llama.cpp's llama-perplexity computes it: the
whole file is tokenized (BOS as the model wants, special tokens not parsed), cut into windows of
--ctx tokens (the tail that fills no window is dropped; at least two windows), each window
evaluated from scratch with its first token replaced by BOS when the model adds one, and only
the second half of each window scored. Prints the running value per window, then
"Final estimate: PPL = P +/- E" as llama-perplexity does.

options:
  --ctx N        window length in tokens (default 512)
  --adapter DIR  a PEFT adapter folder applied to the model
  --dtype f32    dequantize a GGUF model's weights on load (default: keep them quantized)
  --kv-cache T   a GGUF model's key/value precision, f16 (default, as llama.cpp) or f32
  --threads N    CPU threads
  --json         print one JSON object {"perplexity", "tokens", "ctx", ...} instead
)";

int run_perplexity(const std::vector<std::string>& argv) {
  Args a(argv, {"model", "text", "ctx", "adapter", "dtype", "threads", "kv-cache"}, {"json"});
  if (a.help) {
    std::printf("%s", kPerplexityHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  apply_threads_option(a);
  const int64_t ctx = a.get_int("ctx", 512);
  if (ctx < 4) throw UsageError{"--ctx must be at least 4"};
  const std::string text = read_text_file(a.required("text"), "peft perplexity");
  nn::PretrainedOptions popts = model_options(a);
  apply_kv_cache_option(a, popts);
  nn::TextModel tm = nn::TextModel::load(a.required("model"), popts);
  if (a.has("adapter")) load_adapter_folders(*tm.model, {a.get("adapter")});
  const Tokenizer& tok = tm.tok();
  // llama-perplexity: common_tokenize(ctx, text, add_special=true, parse_special=false)
  const std::vector<int64_t> ids = tok.encode(text, /*add_special_tokens=*/true, /*parse_special=*/false).ids;
  // the BOS the model adds (llama_vocab_get_add_bos): what an empty text encodes to
  std::optional<int64_t> bos;
  if (const Encoding e = tok.encode("", true, false); e.size() == 1 && tok.encode("", false, false).size() == 0)
    bos = e.ids[0];
  const bool json_out = a.has("json");
  train::Progress bar("perplexity", int64_t(ids.size()) / ctx);
  nn::PerplexityResult r = nn::perplexity(*tm.model, ids, ctx, bos, [&](int64_t done, int64_t total, double ppl) {
    if (json_out) bar.update(done, "windows");
    else std::printf("[%lld/%lld] %.4f\n", (long long)done, (long long)total, ppl), std::fflush(stdout);
  });
  if (json_out) {
    nlohmann::ordered_json j = {{"perplexity", r.perplexity}, {"tokens", r.scored_tokens}, {"ctx", r.ctx},
                                {"text_tokens", ids.size()}, {"windows", r.windows},
                                {"uncertainty", r.nll_stderr * r.perplexity}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("Final estimate: PPL = %.4f +/- %.5f (%lld tokens scored in %lld windows of %lld)\n", r.perplexity,
                r.nll_stderr * r.perplexity, (long long)r.scored_tokens, (long long)r.windows, (long long)r.ctx);
  }
  return 0;
}

Registrar reg_perplexity({"perplexity", "perplexity of a decoder over a text file, as llama-perplexity computes it",
                          run_perplexity});
Registrar reg_embed({"embed", "sentence embeddings from a Hugging Face encoder folder (+ adapter)", run_embed});
}  // namespace

}  // namespace peft::cli
