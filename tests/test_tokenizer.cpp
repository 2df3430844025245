// Tokenizers from tokenizer.json (io/tokenizer.h) against the Rust `tokenizers` library's
// outputs (tests/data/hf/tok_*), the real all-MiniLM-L6-v2 tokenizer against the ids of the
// hf_minilm_lora_real golden, and the errors on what is not supported; GGUF tokenizers and chat
// templates (io/chat_template.h) against llama.cpp's outputs.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "tests/testing.h"
#include "tools/parity.h"

using namespace peft;
using namespace peft::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {


json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

}  // namespace

TEST_CASE("parity: every tok_* case (ids, ids without special tokens, decoded text)") {
  for (const char* name : {"tok_wordpiece_minilm", "tok_bytelevel_bpe", "tok_sentencepiece_bpe_byte_fallback"}) {
    CAPTURE(name);
    tools::ParityReport r = tools::run_parity_case(std::string("tests/data/hf/") + name);
    for (const auto& c : r.checks) {
      CAPTURE(tools::format_check(c));
      CHECK(c.status == tools::ParityCheck::Status::pass);
    }
    CHECK(r.passed == 4);
    CHECK(r.failed == 0);
  }
}

TEST_CASE("the real all-MiniLM-L6-v2 tokenizer gives the golden's input ids (sentence-transformers' settings)") {
  const std::string dir = testing::minilm_dir();
  REQUIRE(fs::exists(dir + "/tokenizer.json"));
  Tokenizer t = Tokenizer::from_file(dir + "/tokenizer.json");
  // sentence-transformers: padding to the longest text, truncation at max_seq_length (256)
  TruncationParams tr;
  tr.max_length = 256;
  t.set_truncation(tr);
  PaddingParams pad = *t.padding();
  pad.fixed_length.reset();
  t.set_padding(pad);
  const json meta = read_json("tests/data/hf/hf_minilm_lora_real/case.json");
  const auto texts = meta.at("texts").get<std::vector<std::string>>();
  StateDict io = io::load_safetensors("tests/data/hf/hf_minilm_lora_real/io.safetensors");
  std::vector<Encoding> enc = t.encode_batch(texts);
  std::vector<int64_t> ids, mask, types;
  for (const auto& e : enc) {
    ids.insert(ids.end(), e.ids.begin(), e.ids.end());
    mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
    types.insert(types.end(), e.type_ids.begin(), e.type_ids.end());
  }
  CHECK(ids == io.at("input_ids").to_vector<int64_t>());
  CHECK(mask == io.at("attention_mask").to_vector<int64_t>());
  CHECK(types == io.at("token_type_ids").to_vector<int64_t>());
  CHECK(t.decode(enc[0].ids) == "a man is playing a guitar.");
}

TEST_CASE("tokenizer: truncation and padding directions, unknown ids, invalid UTF-8") {
  Tokenizer t = Tokenizer::from_file("tests/data/hf/tok_wordpiece_minilm/tokenizer.json");
  // the file pads to 128: [CLS] hello world [SEP] then 124 x [PAD]
  Encoding e = t.encode("Hello world");
  REQUIRE(e.size() == 128);
  CHECK(e.ids[0] == 101);
  CHECK(e.ids[3] == 102);
  CHECK(e.attention_mask[4] == 0);
  CHECK(e.special_tokens_mask[0] == 1);
  CHECK(e.special_tokens_mask[1] == 0);
  // left truncation keeps the end, leaving room for [CLS] and [SEP]; left padding to a multiple of 8
  TruncationParams tr;
  tr.max_length = 4;
  tr.direction = TruncationParams::Direction::Left;
  t.set_truncation(tr);
  PaddingParams p = *t.padding();
  p.fixed_length.reset();
  p.pad_to_multiple_of = 8;
  p.direction = PaddingParams::Direction::Left;
  t.set_padding(p);
  Encoding l = t.encode("one two three four");
  const std::vector<int64_t> want_tail = {101, *t.token_to_id("three"), *t.token_to_id("four"), 102};
  REQUIRE(l.size() == 8);
  CHECK(std::vector<int64_t>(l.ids.begin() + 4, l.ids.end()) == want_tail);
  CHECK(l.ids[0] == 0);
  CHECK(l.attention_mask[3] == 0);
  // the batch pads to its longest member
  auto batch = t.encode_batch({"a", "one two"});
  CHECK(batch[0].size() == batch[1].size());
  // unknown ids are skipped by decode, special tokens on request
  CHECK(t.decode({101, 999999, *t.token_to_id("hello"), 102}) == "hello");
  CHECK(t.decode({101, *t.token_to_id("hello"), 102}, false) == "[CLS] hello [SEP]");
  CHECK(error_of([&] { t.encode(std::string("ab\xff" "c")); }).find("not valid UTF-8 (byte offset 2)") !=
        std::string::npos);
}

TEST_CASE("tokenizer.json: unsupported components and malformed fields are named") {
  json j = read_json("tests/data/hf/tok_wordpiece_minilm/tokenizer.json");
  auto err = [](const json& doc) { return error_of([&] { Tokenizer::from_json_text(doc.dump(), "t.json"); }); };
  json a = j;
  a["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  CHECK(err(a).find("Precompiled") != std::string::npos);
  CHECK(err(a).find("t.json") != std::string::npos);
  json b = j;
  b["model"]["type"] = "Unigram";
  CHECK(err(b).find("Unigram") != std::string::npos);
  json c = j;
  c["padding"]["strategy"] = "Everything";
  CHECK(err(c).find("padding.strategy") != std::string::npos);
  json d = j;
  d["added_tokens"][0]["id"] = -1;
  CHECK(err(d).find("added_tokens[0].id") != std::string::npos);
  json e = j;
  e["truncation"]["stride"] = 4;
  CHECK(err(e).find("truncation.stride 4 is not supported") != std::string::npos);
  json f = j;
  f["truncation"]["max_length"] = 1;
  Tokenizer tiny = Tokenizer::from_json_text(f.dump(), "t.json");
  CHECK(error_of([&] { tiny.encode("hello"); }).find("truncation max_length 1 is smaller than the 2 special tokens") !=
        std::string::npos);
  CHECK(error_of([] { Tokenizer::from_json_text("{\"model\":", "t.json"); }).find("not valid JSON") != std::string::npos);
  CHECK(error_of([] { Tokenizer::from_file("tests/data/hf/nope/tokenizer.json"); }).find("no such file") !=
        std::string::npos);
}

// ---------------------------------------------------------------------- GGUF (llama.cpp) --
// Tokenizer::from_gguf against llama.cpp's own ids (tests/data/gguf/tokenizer/*.json, written by
// tools/reference/make_tokenizer_goldens.py from llama_tokenize / llama_detokenize). The GGUF
// files are not committed: SmolLM2-135M-Instruct comes from PEFT_SMOLLM2_GGUF and llama.cpp's
// vocabulary-only files (models/ggml-vocab-*.gguf) from PEFT_LLAMA_CPP_SRC, the llama.cpp source
// folder (scripts/build_llama_cpp.sh puts it in ~/.cache/peft/llama.cpp/src); a case whose
// variable is unset is reported as skipped.

namespace {

constexpr const char* kGgufGoldens = "tests/data/gguf/tokenizer/";

bool env_unset(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == '\0';
}

const std::vector<std::string>& golden_corpus() {
  static const std::vector<std::string> texts =
      read_json(std::string(kGgufGoldens) + "corpus.json").at("texts").get<std::vector<std::string>>();
  return texts;
}

std::vector<int64_t> parse_ids(const std::string& s) {
  std::vector<int64_t> ids;
  std::istringstream in(s);
  for (int64_t v; in >> v;) ids.push_back(v);
  return ids;
}

std::string show_ids(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t k = 0; k < v.size() && k < 40; ++k) {
    if (k) s += ' ';
    s += std::to_string(v[k]);
  }
  if (v.size() > 40) s += " ...";
  return s;
}

// Every text of a golden: encode with and without BOS/EOS, decode with and without the special
// tokens. Returns the number of texts with any difference; the first ones are described in `report`.
size_t check_gguf_golden(const Tokenizer& t, const json& golden, std::string& report) {
  const auto& corpus = golden_corpus();
  const size_t n = golden.at("n_texts").get<size_t>();
  REQUIRE(n <= corpus.size());
  const auto ids = golden.at("ids").get<std::vector<std::string>>();
  REQUIRE(ids.size() == n);
  const auto prefix = golden.at("special_prefix").get<std::vector<int64_t>>();
  const std::string lead = golden.at("decoded_lead").get<std::string>();
  std::map<size_t, std::string> decoded;
  for (const json& p : golden.at("decoded")) decoded[p.at(0).get<size_t>()] = p.at(1).get<std::string>();
  const auto decoded_special = golden.at("decoded_special").get<std::vector<std::string>>();
  size_t bad = 0, shown = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = corpus[i];
    const std::vector<int64_t> plain = parse_ids(ids[i]);
    std::vector<int64_t> with = prefix;
    with.insert(with.end(), plain.begin(), plain.end());
    std::ostringstream why;
    const std::vector<int64_t> got_plain = t.encode(text, false).ids, got_with = t.encode(text, true).ids;
    if (got_plain != plain) why << "  ids: got [" << show_ids(got_plain) << "], llama.cpp [" << show_ids(plain) << "]\n";
    if (got_with != with)
      why << "  ids with BOS/EOS: got [" << show_ids(got_with) << "], llama.cpp [" << show_ids(with) << "]\n";
    auto it = decoded.find(i);
    const std::string want_text = it != decoded.end() ? it->second : lead + text;
    if (std::string d = t.decode(with, true); d != want_text)
      why << "  decode: got " << json(d).dump() << ", llama.cpp " << json(want_text).dump() << "\n";
    if (i < decoded_special.size())
      if (std::string d = t.decode(with, false); d != decoded_special[i])
        why << "  decode with special tokens: got " << json(d).dump() << ", llama.cpp " << json(decoded_special[i]).dump()
            << "\n";
    if (!why.str().empty()) {
      ++bad;
      if (shown++ < 8) report += "text " + std::to_string(i) + " " + json(text).dump() + ":\n" + why.str();
    }
  }
  return bad;
}

// A GGUF file with only metadata (no tensors), for the error cases.
class GGUFBuilder {
 public:
  GGUFBuilder& str(const std::string& key, const std::string& v) {
    kv(key, 8);
    put_str(v);
    return *this;
  }
  GGUFBuilder& strs(const std::string& key, const std::vector<std::string>& v) {
    kv(key, 9);
    put<uint32_t>(8);
    put<uint64_t>(v.size());
    for (const auto& s : v) put_str(s);
    return *this;
  }
  GGUFBuilder& ints(const std::string& key, const std::vector<int32_t>& v) {
    kv(key, 9);
    put<uint32_t>(5);
    put<uint64_t>(v.size());
    for (int32_t x : v) put<int32_t>(x);
    return *this;
  }
  std::shared_ptr<io::GGUFFile> open(const std::string& name) const {
    std::string head = "GGUF";
    auto append = [&](const auto& x) { head.append(reinterpret_cast<const char*>(&x), sizeof(x)); };
    append(uint32_t(3));
    append(uint64_t(0));
    append(uint64_t(n_));
    std::string all = head + body_;
    all.resize((all.size() + 31) / 32 * 32, '\0');
    const fs::path p = fs::temp_directory_path() / ("peft_test_" + name + ".gguf");
    std::ofstream(p, std::ios::binary) << all;
    return io::GGUFFile::open(p.string());
  }

 private:
  template <class T>
  void put(T v) {
    body_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void put_str(const std::string& s) {
    put<uint64_t>(s.size());
    body_ += s;
  }
  void kv(const std::string& key, uint32_t type) {
    put_str(key);
    put<uint32_t>(type);
    ++n_;
  }
  std::string body_;
  uint64_t n_ = 0;
};

}  // namespace

TEST_CASE("gguf tokenizer: SmolLM2-135M-Instruct is token for token llama.cpp's (PEFT_SMOLLM2_GGUF; skipped unset)" *
          doctest::skip(env_unset("PEFT_SMOLLM2_GGUF"))) {
  const std::string path = std::getenv("PEFT_SMOLLM2_GGUF");
  INFO("PEFT_SMOLLM2_GGUF=", path);
  REQUIRE(fs::exists(path));
  auto file = io::GGUFFile::open(path);
  const Tokenizer t = Tokenizer::from_gguf(*file);
  const json golden = read_json(std::string(kGgufGoldens) + "smollm2.json");
  std::string report;
  const size_t bad = check_gguf_golden(t, golden, report);
  MESSAGE("SmolLM2: ", golden.at("n_texts").get<size_t>(), " texts, ", bad, " differ from llama.cpp");
  INFO(report);
  CHECK(bad == 0);
  // the vocabulary itself, and what an Encoding carries
  CHECK(t.vocab_size() == 49152);
  CHECK(t.token_to_id("<|im_start|>") == std::optional<int64_t>(1));
  CHECK(t.id_to_token(2) == std::optional<std::string>("<|im_end|>"));
  CHECK(!t.id_to_token(49152).has_value());
  // llama-tokenize -m SmolLM2 -p "<|im_start|>user\nHi there<|im_end|>" --ids (SmolLM2 adds no BOS)
  const Encoding e = t.encode("<|im_start|>user\nHi there<|im_end|>", true);
  REQUIRE(e.size() == 6);
  CHECK(e.ids == std::vector<int64_t>{1, 4093, 198, 26843, 665, 2});
  CHECK(e.tokens[0] == "<|im_start|>");
  CHECK(e.tokens[2] == "\xC4\x8A");  // the byte-level vocabulary's newline
  CHECK(e.special_tokens_mask == std::vector<int64_t>(6, 0));
  CHECK(e.attention_mask == std::vector<int64_t>(6, 1));
  // unknown ids are skipped by decode; right truncation keeps the start
  CHECK(t.decode({19556, 999999, 905}) == "Hello world");
  TruncationParams tr;
  tr.max_length = 2;
  Tokenizer cut = Tokenizer::from_gguf(*file);
  cut.set_truncation(tr);
  CHECK(cut.encode("<|im_start|>user\nHi there<|im_end|>").ids == std::vector<int64_t>{1, 4093});
  // the chat template the chat-template goldens were made from is the file's
  CHECK(file->get_string("tokenizer.chat_template") ==
        read_json(std::string(kGgufGoldens) + "chat_templates.json").at("inline_templates").at("smollm2").get<std::string>());
}

TEST_CASE("gguf tokenizer: llama.cpp's vocabulary files are token for token llama.cpp's (PEFT_LLAMA_CPP_SRC; "
          "skipped unset)" * doctest::skip(env_unset("PEFT_LLAMA_CPP_SRC"))) {
  const std::string src = std::getenv("PEFT_LLAMA_CPP_SRC");
  INFO("PEFT_LLAMA_CPP_SRC=", src);
  size_t checked = 0;
  for (const auto& entry : fs::directory_iterator(kGgufGoldens)) {
    const std::string name = entry.path().stem().string();
    if (name == "corpus" || name == "smollm2" || name == "chat_templates") continue;
    CAPTURE(name);
    const std::string path = src + "/models/ggml-vocab-" + name + ".gguf";
    REQUIRE(fs::exists(path));
    auto file = io::GGUFFile::open(path);
    const Tokenizer t = Tokenizer::from_gguf(*file);
    const json golden = read_json(entry.path().string());
    std::string report;
    const size_t bad = check_gguf_golden(t, golden, report);
    MESSAGE(name, ": ", golden.at("n_texts").get<size_t>(), " texts, ", bad, " differ from llama.cpp");
    INFO(report);
    CHECK(bad == 0);
    // llama.cpp's own tokenizer test for the file (tests/test-tokenizer-0.cpp: no BOS/EOS)
    const std::string inp = path + ".inp", out = path + ".out";
    if (fs::exists(inp) && fs::exists(out)) {
      std::ifstream fi(inp, std::ios::binary), fo(out);
      const std::string raw((std::istreambuf_iterator<char>(fi)), std::istreambuf_iterator<char>());
      std::vector<std::string> texts;
      const std::string sep = "\n__ggml_vocab_test__\n";
      for (size_t pos = 0; pos < raw.size();) {
        const size_t next = raw.find(sep, pos);
        texts.push_back(raw.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
        if (next == std::string::npos) break;
        pos = next + sep.size();
      }
      std::vector<std::string> lines;
      for (std::string line; std::getline(fo, line);) lines.push_back(line);
      REQUIRE(texts.size() == lines.size());
      size_t inp_bad = 0;
      for (size_t i = 0; i < texts.size(); ++i) {
        const auto got = t.encode(texts[i], false).ids;
        if (got != parse_ids(lines[i])) {
          ++inp_bad;
          INFO(json(texts[i]).dump(), ": got [", show_ids(got), "], llama.cpp [", lines[i], "]");
          CHECK(got == parse_ids(lines[i]));
        }
      }
      CHECK(inp_bad == 0);
    }
    ++checked;
  }
  CHECK(checked >= 15);
}

TEST_CASE("gguf tokenizer: unknown pre-tokenizers, models and missing fields are errors naming them") {
  const std::vector<std::string> tokens = {"a", "b", "ab"};
  auto bpe = [&](const std::string& pre) {
    return GGUFBuilder().str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", pre)
        .strs("tokenizer.ggml.tokens", tokens).strs("tokenizer.ggml.merges", {"a b"});
  };
  auto err = [](const GGUFBuilder& b, const std::string& name) {
    auto f = b.open(name);
    return error_of([&] { Tokenizer::from_gguf(*f); });
  };
  const std::string unknown = err(bpe("my-new-pre"), "pre");
  CHECK(unknown.find("unknown tokenizer.ggml.pre 'my-new-pre'") != std::string::npos);
  CHECK(unknown.find("peft_test_pre.gguf") != std::string::npos);
  CHECK(error_of([&] {
          auto f = bpe("my-new-pre").open("pre_kind");
          try {
            Tokenizer::from_gguf(*f);
          } catch (const FormatError&) {
            throw Error("FormatError");
          }
        }) == "FormatError");
  CHECK(err(bpe("kimi-k2"), "kimi").find("'kimi-k2' is not supported") != std::string::npos);
  CHECK(err(GGUFBuilder().str("tokenizer.ggml.model", "bert").strs("tokenizer.ggml.tokens", tokens), "bert")
            .find("tokenizer.ggml.model 'bert' is not supported") != std::string::npos);
  CHECK(err(GGUFBuilder().str("general.name", "x"), "none").find("tokenizer.ggml.model is missing") !=
        std::string::npos);
  CHECK(err(GGUFBuilder().str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "gpt-2")
                .strs("tokenizer.ggml.tokens", tokens), "nomerges")
            .find("no tokenizer.ggml.merges") != std::string::npos);
  CHECK(err(GGUFBuilder().str("tokenizer.ggml.model", "llama").strs("tokenizer.ggml.tokens", tokens)
                .ints("tokenizer.ggml.token_type", {1, 1}), "types")
            .find("tokenizer.ggml.token_type has 2 entries for 3 tokens") != std::string::npos);
  // an SPM vocabulary without byte tokens cannot encode a character it lacks
  auto spm = GGUFBuilder().str("tokenizer.ggml.model", "llama").strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xE2\x96\x81"})
                 .open("spm_nobytes");
  const Tokenizer t = Tokenizer::from_gguf(*spm);
  CHECK(error_of([&] { t.encode("x"); }).find("no byte token <0x78>") != std::string::npos);
}

// ---------------------------------------------------------------------------- chat templates --
// io/chat_template.h against llama.cpp's llm_chat_detect_template / llama_chat_apply_template
// (tests/data/gguf/tokenizer/chat_templates.json) and, for the default system prompt of a ChatML
// template, against the template rendered by jinja2 (as Hugging Face renders it).

namespace {

const json& chat_golden() {
  static const json j = read_json(std::string(kGgufGoldens) + "chat_templates.json");
  return j;
}

std::vector<ChatMessage> conversation(const std::string& name) {
  std::vector<ChatMessage> out;
  for (const json& m : chat_golden().at("conversations").at(name))
    out.push_back({m.at(0).get<std::string>(), m.at(1).get<std::string>()});
  return out;
}

// llama.cpp's text of `format` for a conversation.
std::string llama_cpp_chat(const std::string& format, const std::string& conv, bool add_ass) {
  return chat_golden().at("formats").at(format).at(conv + "/" + (add_ass ? "1" : "0")).get<std::string>();
}

const std::vector<std::string> kConversations = {"one_user", "system_multi_turn", "no_system"};

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
  return s;
}

}  // namespace

TEST_CASE("chat templates: every llama.cpp format by name renders llama.cpp's text") {
  size_t n = 0;
  for (const auto& [format, texts] : chat_golden().at("formats").items()) {
    CAPTURE(format);
    if (format == "dots1") continue;  // detected, never named
    CHECK(detect_chat_format(format) == format);
    for (const std::string& conv : kConversations)
      for (bool add : {true, false}) {
        CAPTURE(conv);
        CAPTURE(add);
        CHECK(render_chat(format, conversation(conv), add, "<s>", "</s>") == llama_cpp_chat(format, conv, add));
        CHECK(render_chat(format, conversation(conv), add) == llama_cpp_chat(format, conv, add));
      }
    ++n;
  }
  CHECK(n == 54);
}

TEST_CASE("chat templates: ChatML and Llama-3 templates, SmolLM2's default system prompt") {
  const json& inline_templates = chat_golden().at("inline_templates");
  const std::string smollm2 = inline_templates.at("smollm2"), llama3 = inline_templates.at("llama3_meta"),
                    chatml = inline_templates.at("chatml_plain");
  CHECK(detect_chat_format(smollm2) == "chatml");
  CHECK(detect_chat_format(chatml) == "chatml");
  CHECK(detect_chat_format(llama3) == "llama3");
  for (const std::string& conv : kConversations)
    for (bool add : {true, false}) {
      CAPTURE(conv);
      CAPTURE(add);
      CHECK(render_chat(chatml, conversation(conv), add, "", "") == llama_cpp_chat("chatml", conv, add));
      CHECK(render_chat(llama3, conversation(conv), add, "<|begin_of_text|>", "<|eot_id|>") ==
            llama_cpp_chat("llama3", conv, add));
    }
  // SmolLM2's template writes its own system turn when the first message is not a system message:
  // the template's rendering (jinja2), which is llama.cpp's text after that turn; with a system
  // message it is llama.cpp's text
  CHECK(chat_default_system_prompt(smollm2) ==
        std::optional<std::string>("You are a helpful AI assistant named SmolLM, trained by Hugging Face"));
  CHECK(!chat_default_system_prompt(chatml).has_value());
  CHECK(!chat_default_system_prompt(llama3).has_value());
  size_t jinja = 0;
  for (const json& c : chat_golden().at("jinja2_cases")) {
    if (c.at("template") != "smollm2") continue;
    const std::string conv = c.at("conversation");
    const bool add = c.at("add_generation_prompt");
    CAPTURE(conv);
    CAPTURE(add);
    const std::string got = render_chat(smollm2, conversation(conv), add, "<|im_start|>", "<|im_end|>");
    CHECK(got == c.at("jinja2").get<std::string>());
    if (conv == "system_multi_turn") {
      CHECK(got == llama_cpp_chat("chatml", conv, add));
    } else {
      CHECK(got != llama_cpp_chat("chatml", conv, add));
      CHECK(got == "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" +
                       llama_cpp_chat("chatml", conv, add));
    }
    ++jinja;
  }
  CHECK(jinja == 6);
  // no messages: nothing to put a system turn before
  CHECK(render_chat(smollm2, {}, true) == "<|im_start|>assistant\n");
}

TEST_CASE("chat templates: BOS/EOS texts where llama.cpp writes <s> / </s>, unknown templates are errors") {
  // llama2 / mistral / vicuna write the given EOS where llama.cpp writes "</s>", monarch the BOS
  for (const char* format : {"llama2", "mistral-v7", "vicuna", "orion", "monarch", "gigachat"}) {
    CAPTURE(format);
    std::string want = llama_cpp_chat(format, "system_multi_turn", true);
    want = replace_all(replace_all(want, "</s>", "[EOS]"), "<s>", "[BOS]");
    CHECK(render_chat(format, conversation("system_multi_turn"), true, "[BOS]", "[EOS]") == want);
    CHECK(want != llama_cpp_chat(format, "system_multi_turn", true));
  }
  const json& inline_templates = chat_golden().at("inline_templates");
  for (const char* key : {"unknown_plain", "unknown_text"}) {
    const std::string tmpl = inline_templates.at(key);
    CHECK(chat_golden().at("templates").at(key) == "unknown");  // llama.cpp recognises neither
    const std::string e = error_of([&] { render_chat(tmpl, conversation("one_user"), true); });
    const std::string head = replace_all(tmpl.substr(0, 60), "\n", " ");  // quoted on one line
    CHECK(e.find("no known chat format in the template \"" + head) != std::string::npos);
    CHECK(error_of([&] { detect_chat_format(tmpl); }) == e);
  }
  const std::string long_tmpl(100, 'x');
  CHECK(error_of([&] { detect_chat_format(long_tmpl); }).find("\"" + std::string(60, 'x') + "...\"") !=
        std::string::npos);
}

TEST_CASE("chat templates: llama.cpp's real-world templates (PEFT_LLAMA_CPP_SRC; skipped unset)" *
          doctest::skip(env_unset("PEFT_LLAMA_CPP_SRC"))) {
  const std::string src = std::getenv("PEFT_LLAMA_CPP_SRC");
  std::map<std::string, std::string> jinja2_text;  // template/conversation/add -> text
  for (const json& c : chat_golden().at("jinja2_cases"))
    jinja2_text[c.at("template").get<std::string>() + "/" + c.at("conversation").get<std::string>() + "/" +
                (c.at("add_generation_prompt").get<bool>() ? "1" : "0")] = c.at("jinja2");
  size_t n = 0, with_default = 0;
  for (const auto& [key, format] : chat_golden().at("templates").items()) {
    if (key.rfind("models/templates/", 0) != 0) continue;
    CAPTURE(key);
    std::ifstream in(src + "/" + key, std::ios::binary);
    REQUIRE(in);
    const std::string tmpl((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ++n;
    if (format == "unknown") {
      CHECK(error_of([&] { detect_chat_format(tmpl); }).find("no known chat format") != std::string::npos);
      continue;
    }
    CHECK(detect_chat_format(tmpl) == format.get<std::string>());
    const bool has_default = chat_default_system_prompt(tmpl).has_value();
    with_default += has_default;
    for (const std::string& conv : kConversations)
      for (bool add : {true, false}) {
        CAPTURE(conv);
        CAPTURE(add);
        const std::string got = render_chat(tmpl, conversation(conv), add, "<s>", "</s>");
        if (has_default && conv != "system_multi_turn") {
          // the template's own system turn first: its jinja2 rendering
          auto it = jinja2_text.find(key + "/" + conv + "/" + (add ? "1" : "0"));
          REQUIRE(it != jinja2_text.end());
          CHECK(got == it->second);
        } else {
          CHECK(got == llama_cpp_chat(format, conv, add));
        }
      }
  }
  CHECK(n >= 70);
  CHECK(with_default == 2);  // Qwen2.5 and MiMo-VL
}
