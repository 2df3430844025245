// Reference-side helper, not part of peft.cpp: llama.cpp's tokenizer and chat templates on many
// inputs in one process (llama-tokenize loads the vocabulary once per text), for
// tools/reference/make_tokenizer_goldens.py. Built by that script against the static libraries
// of scripts/build_llama_cpp.sh. Usage:
//   peft-llama-tokenize-lines tokenize MODEL.gguf TEXTS OUT
//     TEXTS: the texts, each followed by a NUL byte. OUT: one line per text, tab-separated:
//     llama_tokenize(add_special = true, parse_special = true) ids, the same with
//     add_special = false, then hex of llama_detokenize(first ids, remove_special = false,
//     unparse_special = false) and of the same with unparse_special = true. Also the vocabulary's
//     add_bos flag on the first line ("add_bos 0|1").
//   peft-llama-tokenize-lines chat TEMPLATE MESSAGES ADD_ASS OUT
//     MESSAGES: role NUL content NUL ... OUT: the detected format's name (llm_chat_detect_template,
//     "unknown" when none), a NUL, then llama_chat_apply_template's text.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "llama-chat.h"
#include "llama.h"

namespace {

std::string read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> split_nul(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t end = s.find('\0', pos);
    if (end == std::string::npos) break;
    out.push_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

std::vector<llama_token> tokenize(const llama_vocab* vocab, const std::string& text, bool add_special) {
  std::vector<llama_token> ids(text.size() + 8);
  int n = llama_tokenize(vocab, text.data(), int32_t(text.size()), ids.data(), int32_t(ids.size()), add_special, true);
  if (n < 0) {
    ids.resize(size_t(-n));
    n = llama_tokenize(vocab, text.data(), int32_t(text.size()), ids.data(), int32_t(ids.size()), add_special, true);
  }
  ids.resize(size_t(n));
  return ids;
}

std::string detokenize(const llama_vocab* vocab, const std::vector<llama_token>& ids, bool special) {
  std::string text(ids.size() * 8 + 16, '\0');
  int n = llama_detokenize(vocab, ids.data(), int32_t(ids.size()), text.data(), int32_t(text.size()), false, special);
  if (n < 0) {
    text.resize(size_t(-n));
    n = llama_detokenize(vocab, ids.data(), int32_t(ids.size()), text.data(), int32_t(text.size()), false, special);
  }
  text.resize(size_t(n));
  return text;
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string join(const std::vector<llama_token>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

int run_tokenize(const char* model_path, const char* texts_path, const char* out_path) {
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.vocab_only = true;
  llama_model* model = llama_model_load_from_file(model_path, mp);
  if (!model) return 1;
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::ofstream out(out_path, std::ios::binary);
  out << "add_bos " << (llama_vocab_get_add_bos(vocab) ? 1 : 0) << "\n";
  for (const std::string& text : split_nul(read_file(texts_path))) {
    const std::vector<llama_token> with = tokenize(vocab, text, true), without = tokenize(vocab, text, false);
    out << join(with) << "\t" << join(without) << "\t" << hex(detokenize(vocab, with, false)) << "\t"
        << hex(detokenize(vocab, with, true)) << "\n";
  }
  llama_model_free(model);
  return 0;
}

int run_chat(const char* tmpl_path, const char* messages_path, bool add_ass, const char* out_path) {
  const std::string tmpl = read_file(tmpl_path);
  const std::vector<std::string> parts = split_nul(read_file(messages_path));
  std::vector<llama_chat_message> msgs;
  for (size_t i = 0; i + 1 < parts.size(); i += 2) msgs.push_back({parts[i].c_str(), parts[i + 1].c_str()});
  std::string name = "unknown";
  const llm_chat_template detected = llm_chat_detect_template(tmpl);
  if (detected != LLM_CHAT_TEMPLATE_UNKNOWN) {
    name = "enum:" + std::to_string(int(detected));
    const char* names[128];
    const int n = llama_chat_builtin_templates(names, 128);
    for (int i = 0; i < n && i < 128; ++i)
      if (llm_chat_template_from_str(names[i]) == detected) name = names[i];
  }
  std::string text;
  int n = llama_chat_apply_template(tmpl.c_str(), msgs.data(), msgs.size(), add_ass, nullptr, 0);
  if (n >= 0) {
    std::vector<char> buf(size_t(n) + 1);
    llama_chat_apply_template(tmpl.c_str(), msgs.data(), msgs.size(), add_ass, buf.data(), int32_t(buf.size()));
    text.assign(buf.data(), size_t(n));
  }
  std::ofstream out(out_path, std::ios::binary);
  out << name << '\0' << text;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  if (argc == 5 && std::strcmp(argv[1], "tokenize") == 0) return run_tokenize(argv[2], argv[3], argv[4]);
  if (argc == 6 && std::strcmp(argv[1], "chat") == 0) return run_chat(argv[2], argv[3], std::strcmp(argv[4], "1") == 0, argv[5]);
  std::fprintf(stderr, "usage: %s tokenize MODEL.gguf TEXTS OUT | chat TEMPLATE MESSAGES ADD_ASS OUT\n", argv[0]);
  return 2;
}
