// peft::serve::Server over real sockets with cpp-httplib's client: a tiny BERT encoder (the
// hf_bert_lora_default_targets golden's model with a 120-token WordPiece vocabulary written
// here) and eight LoRA adapters with random (non-zero) B, saved as PEFT folders.
#include <doctest/doctest.h>
#include <httplib.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "adapters/folder.h"
#include "adapters/lora/config.h"
#include "adapters/peft.h"
#include "io/chat_template.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/text_model.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "serve/server.h"

using namespace peft;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// tests/data/hf/tok_wordpiece_minilm/tokenizer.json with a vocabulary that fits the tiny model's
// 120 rows: specials, letters, ##letters, digits, a few words.
void write_tiny_tokenizer(const fs::path& out) {
  std::ifstream in("tests/data/hf/tok_wordpiece_minilm/tokenizer.json");
  json t = json::parse(in);
  json vocab = json::object();
  int id = 0;
  for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) vocab[s] = id++;
  for (char c = 'a'; c <= 'z'; ++c) vocab[std::string(1, c)] = id++;
  for (char c = 'a'; c <= 'z'; ++c) vocab["##" + std::string(1, c)] = id++;
  for (char c = '0'; c <= '9'; ++c) vocab[std::string(1, c)] = id++;
  for (const char* w : {"the", "a", "of", "and", "to", "in", "is", "hello", "world", "text", "cat", "dog", ".", ",", "!", "?"})
    if (!vocab.contains(w)) vocab[w] = id++;
  REQUIRE(id <= 120);
  t["model"]["vocab"] = vocab;
  t["padding"] = nullptr;
  t["truncation"] = nullptr;
  json added = json::array();
  for (json a : t["added_tokens"]) {
    const std::string c = a["content"];
    if (!vocab.contains(c)) continue;
    a["id"] = vocab[c];
    added.push_back(a);
  }
  t["added_tokens"] = added;
  for (auto& [k, v] : t["post_processor"]["special_tokens"].items()) v["ids"] = json::array({vocab[k]});
  std::ofstream(out) << t.dump();
}

struct Fixture {
  fs::path root, model, adapters;
  std::vector<std::string> names;
  Fixture() {
    root = fs::temp_directory_path() / (std::string("peft-serve-test-") + std::to_string(::getpid()));
    fs::remove_all(root);
    model = root / "tiny-bert";
    adapters = root / "adapters";
    fs::create_directories(model);
    fs::create_directories(adapters);
    const fs::path src = "tests/data/hf/hf_bert_lora_default_targets/model";
    fs::copy_file(src / "config.json", model / "config.json");
    fs::copy_file(src / "model.safetensors", model / "model.safetensors");
    write_tiny_tokenizer(model / "tokenizer.json");
    for (int i = 0; i < 8; ++i) {
      nn::TextModel tm = nn::TextModel::load(model.string());
      manual_seed(uint64_t(100 + i));
      LoraConfig cfg;
      cfg.r = 4;
      cfg.lora_alpha = 8;
      cfg.target_modules = TargetModules::list({"query", "value", "dense"});
      cfg.init_lora_weights = false;  // random B: every adapter changes the output
      inject_adapter_in_model(cfg, *tm.model, "default");
      const std::string n = std::string("a") + std::to_string(i);
      save_pretrained(*tm.model, (adapters / n).string());
      names.push_back(n);
    }
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// A server on a free port, running on its own thread until the object goes.
struct Running {
  serve::Server server;
  int port;
  std::thread t;
  explicit Running(serve::ServerOptions o) : server(std::move(o)), port(server.bind()) {
    t = std::thread([this] { server.run(); });
  }
  ~Running() {
    server.stop();
    t.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
};

serve::ServerOptions options(size_t max_loaded = 16) {
  serve::ServerOptions o;
  o.model = fixture().model.string();
  o.adapter_dir = fixture().adapters.string();
  o.port = 0;
  o.max_loaded_adapters = max_loaded;
  return o;
}

json post(const httplib::Client& cc, const std::string& path, const json& body, int expect_status,
          const httplib::Headers& h = {}) {
  auto& c = const_cast<httplib::Client&>(cc);
  auto r = c.Post(path, h, body.dump(), "application/json");
  REQUIRE(r);
  CHECK_MESSAGE(r->status == expect_status, body.dump(), " -> ", r->body);
  return json::parse(r->body);
}

// Our embeddings of `texts` with `adapter` ("" base) as `peft embed --adapter` computes them.
std::vector<std::vector<float>> reference(const std::vector<std::string>& texts, const std::string& adapter) {
  nn::TextModel tm = nn::TextModel::load(fixture().model.string());
  if (!adapter.empty()) load_adapter(*tm.model, (fixture().adapters / adapter).string(), adapter);
  tm.model->eval();
  NoGradGuard ng;
  Tensor e = tm.embed(texts).to(DType::float32).contiguous();
  std::vector<std::vector<float>> out;
  for (int64_t i = 0; i < e.size(0); ++i) out.push_back(e.select(0, i).contiguous().to_vector<float>());
  return out;
}

std::vector<std::vector<float>> served(const json& reply) {
  std::vector<std::vector<float>> out;
  for (const auto& d : reply.at("data")) out.push_back(d.at("embedding").get<std::vector<float>>());
  return out;
}

bool bit_equal(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0) return false;
  return true;
}

double max_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < a[i].size(); ++j) m = std::max(m, double(std::fabs(a[i][j] - b[i][j])));
  return m;
}

const std::vector<std::string> kTexts = {"hello world", "the cat and the dog", "a text of words, 42!"};

}  // namespace

TEST_CASE("serve: health, models, and embeddings bit-equal to TextModel::embed (peft embed)") {
  Running s(options());
  auto c = s.client();
  auto h = c.Get("/health");
  REQUIRE(h);
  CHECK(h->status == 200);
  CHECK(json::parse(h->body)["model"] == "tiny-bert");
  auto m = c.Get("/v1/models");
  REQUIRE(m);
  json models = json::parse(m->body);
  REQUIRE(models["data"].size() == 9);  // the base and a0..a7
  CHECK(models["data"][0]["id"] == "tiny-bert");
  CHECK(models["data"][1]["id"] == "tiny-bert:a0");
  CHECK(models["data"][1]["loaded"] == false);

  for (const std::string adapter : {"", "a3"}) {
    CAPTURE(adapter);
    const std::string model = adapter.empty() ? "tiny-bert" : "tiny-bert:" + adapter;
    json r = post(c, "/v1/embeddings", {{"model", model}, {"input", kTexts}}, 200);
    CHECK(r["model"] == model);
    CHECK(r["usage"]["prompt_tokens"].get<int64_t>() > int64_t(kTexts.size()) * 2);
    CHECK(bit_equal(served(r), reference(kTexts, adapter)));
    // base64: the same float32 bytes
    json b = post(c, "/v1/embeddings", {{"model", model}, {"input", kTexts}, {"encoding_format", "base64"}}, 200);
    const std::string s64 = b["data"][1]["embedding"];
    std::string bytes;
    {
      int val = 0, bits = -8;
      for (char ch : s64) {
        const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char* p = std::strchr(tbl, ch);
        if (!p || ch == 0) break;
        val = (val << 6) + int(p - tbl);
        bits += 6;
        if (bits >= 0) bytes.push_back(char((val >> bits) & 0xFF)), bits -= 8;
      }
    }
    const auto ref = reference(kTexts, adapter);
    REQUIRE(bytes.size() == ref[1].size() * sizeof(float));
    CHECK(std::memcmp(bytes.data(), ref[1].data(), bytes.size()) == 0);
  }
  // the adapter changes the output (the test would pass vacuously otherwise)
  CHECK(max_diff(reference(kTexts, ""), reference(kTexts, "a3")) > 1e-3);
  // a single string input
  json one = post(c, "/v1/embeddings", {{"model", "tiny-bert:a1"}, {"input", "hello world"}}, 200);
  CHECK(bit_equal(served(one), reference({"hello world"}, "a1")));
}

TEST_CASE("serve: 32 concurrent clients over 8 adapters equal one-at-a-time results; mixed batches happen") {
  serve::ServerOptions o = options();
  o.batch_window_ms = 20;  // wide enough that concurrent requests meet in one batch
  Running s(o);
  std::vector<std::vector<std::vector<float>>> ref;
  for (int i = 0; i < 8; ++i) ref.push_back(reference(kTexts, std::string("a") + std::to_string(i)));
  std::atomic<int> bad{0}, done{0};
  std::mutex why_mu;
  std::string why;
  std::vector<double> worst(32, 0);
  std::vector<std::thread> clients;
  for (int k = 0; k < 32; ++k)
    clients.emplace_back([&, k] {
      httplib::Client c("127.0.0.1", s.port);
      c.set_read_timeout(60, 0);
      const std::string a = std::string("a") + std::to_string(k % 8);
      auto r = c.Post("/v1/embeddings", json({{"model", "tiny-bert:" + a}, {"input", kTexts}}).dump(), "application/json");
      if (!r || r->status != 200) {
        ++bad;
        std::lock_guard<std::mutex> l(why_mu);
        why += r ? "status " + std::to_string(r->status) + ": " + r->body + "\n" : "client error " + httplib::to_string(r.error()) + "\n";
        return;
      }
      worst[size_t(k)] = max_diff(served(json::parse(r->body)), ref[size_t(k % 8)]);
      ++done;
    });
  for (auto& t : clients) t.join();
  CHECK_MESSAGE(bad == 0, why);
  CHECK(done == 32);
  // a mixed batch computes padded positions and adds each row's LoRA term by index: the same
  // values to float32 rounding, not the same bits
  for (int k = 0; k < 32; ++k) CHECK(worst[size_t(k)] < 2e-6);
  auto c = s.client();
  auto m = c.Get("/metrics");
  REQUIRE(m);
  auto value = [&](const std::string& key) {
    const size_t p = m->body.find("\n" + key + " ");
    REQUIRE(p != std::string::npos);
    return std::stod(m->body.substr(p + key.size() + 2));
  };
  CHECK(value("peft_embedding_inputs_total") == 96);
  CHECK(value("peft_adapter_loads_total") == 8);
  // fewer batches than requests, and some with several adapters
  CHECK(value("peft_batches_total") < 32);
  CHECK(value("peft_batch_adapters_sum") > value("peft_batch_adapters_count"));
}

TEST_CASE("serve: LRU eviction and reload give the same bits; pinned adapters stay") {
  serve::ServerOptions o = options(2);
  o.pinned = {"a7"};
  o.batch_window_ms = 0;
  Running s(o);
  auto c = s.client();
  json first = post(c, "/v1/embeddings", {{"model", "tiny-bert:a0"}, {"input", kTexts}}, 200);
  for (const char* a : {"a1", "a2", "a7"}) post(c, "/v1/embeddings", {{"model", std::string("tiny-bert:") + a}, {"input", kTexts}}, 200);
  json again = post(c, "/v1/embeddings", {{"model", "tiny-bert:a0"}, {"input", kTexts}}, 200);
  CHECK(bit_equal(served(first), served(again)));
  auto m = c.Get("/metrics");
  REQUIRE(m);
  CHECK(m->body.find("\npeft_adapter_evictions_total 3\n") != std::string::npos);
  CHECK(m->body.find("\npeft_adapters_loaded 2\n") != std::string::npos);
  json models = json::parse(c.Get("/v1/models")->body);
  for (const auto& d : models["data"])
    if (d["id"] == "tiny-bert:a7") CHECK(d["loaded"] == true);
  // pinned: not deletable; unknown: 404; a loaded one: unloaded
  auto del = [&](const std::string& n) { return c.Delete("/v1/adapters/" + n)->status; };
  CHECK(del("a7") == 409);
  CHECK(del("zz") == 404);
  CHECK(del("a0") == 200);
}

TEST_CASE("serve: API key, path confinement, malformed requests, limits") {
  // authentication
  {
    serve::ServerOptions o = options();
    o.api_key = "sekret";
    Running s(o);
    auto c = s.client();
    json body = {{"model", "tiny-bert"}, {"input", "hello"}};
    json e = post(c, "/v1/embeddings", body, 401);
    CHECK(e["error"]["type"] == "authentication_error");
    post(c, "/v1/embeddings", body, 401, {{"Authorization", "Bearer wrong"}});
    post(c, "/v1/embeddings", body, 200, {{"Authorization", "Bearer sekret"}});
    auto h = c.Get("/health");
    REQUIRE(h);
    CHECK(h->status == 401);
  }
  // an adapter folder that links out of the directory, and one outside it
  const fs::path outside = fixture().root / "outside";
  fs::create_directories(outside);
  fs::copy(fixture().adapters / "a0", outside / "evil", fs::copy_options::recursive);
  std::error_code ec;
  fs::remove(fixture().adapters / "link", ec);
  fs::create_directory_symlink(outside / "evil", fixture().adapters / "link");
  serve::ServerOptions o = options();
  o.max_inputs = 4;
  o.max_body_bytes = 4096;
  o.max_input_bytes = 100;
  Running s(o);
  auto c = s.client();
  CHECK(post(c, "/v1/adapters", {{"name", "x"}, {"path", "../outside/evil"}}, 403)["error"]["param"] == "path");
  CHECK(post(c, "/v1/adapters", {{"name", "x"}, {"path", outside.string() + "/evil"}}, 403)["error"]["type"] == "permission_error");
  post(c, "/v1/embeddings", {{"model", "tiny-bert:link"}, {"input", "hello"}}, 403);
  post(c, "/v1/embeddings", {{"model", "tiny-bert:.."}, {"input", "hello"}}, 400);
  post(c, "/v1/adapters", {{"name", "../x"}, {"path", "a1"}}, 400);
  json ok = post(c, "/v1/adapters", {{"name", "again"}, {"path", "a1"}}, 201);
  CHECK(ok["id"] == "tiny-bert:again");
  CHECK(bit_equal(served(post(c, "/v1/embeddings", {{"model", "tiny-bert:again"}, {"input", kTexts}}, 200)),
                  reference(kTexts, "a1")));
  fs::remove(fixture().adapters / "link", ec);

  struct Bad {
    json body;
    int status;
    const char* param;
  };
  const std::vector<Bad> bad = {
      {json::object(), 400, "model"},
      {{{"model", 3}, {"input", "x"}}, 400, "model"},
      {{{"model", "tiny-bert"}}, 400, "input"},
      {{{"model", "tiny-bert"}, {"input", {{"a", 1}}}}, 400, "input"},
      {{{"model", "tiny-bert"}, {"input", json::array()}}, 400, "input"},
      {{{"model", "tiny-bert"}, {"input", {""}}}, 400, "input"},
      {{{"model", "tiny-bert"}, {"input", {"a", 5}}}, 400, "input"},
      {{{"model", "tiny-bert"}, {"input", {"a", "b", "c", "d", "e"}}}, 400, "input"},  // over --max-inputs
      {{{"model", "tiny-bert"}, {"input", std::string(101, 'a')}}, 400, "input"},       // over the bytes per text
      {{{"model", "tiny-bert"}, {"input", "x"}, {"encoding_format", "hex"}}, 400, "encoding_format"},
      {{{"model", "tiny-bert"}, {"input", "x"}, {"dimensions", 7}}, 400, "dimensions"},
      {{{"model", "other"}, {"input", "x"}}, 404, "model"},
      {{{"model", "tiny-bert:nope"}, {"input", "x"}}, 404, "model"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.body.dump());
    json e = post(c, "/v1/embeddings", b.body, b.status);
    CHECK(e["error"]["param"] == b.param);
    CHECK(!e["error"]["message"].get<std::string>().empty());
  }
  auto r = c.Post("/v1/embeddings", "{not json", "application/json");
  REQUIRE(r);
  CHECK(r->status == 400);
  CHECK(json::parse(r->body)["error"]["type"] == "invalid_request_error");
  r = c.Post("/v1/embeddings", std::string(5000, ' '), "application/json");  // over --max-body-bytes
  REQUIRE(r);
  CHECK(r->status == 413);
  r = c.Get("/v1/nothing");
  REQUIRE(r);
  CHECK(r->status == 404);
  CHECK(json::parse(r->body)["error"]["type"] == "not_found_error");
  CHECK(post(c, "/v1/chat/completions", {{"model", "tiny-bert"}}, 400)["error"]["message"].get<std::string>().find(
            "encoder") != std::string::npos);
  // the server answers after all of that
  post(c, "/v1/embeddings", {{"model", "tiny-bert"}, {"input", "hello"}}, 200);
}

TEST_CASE("serve: stop() answers the requests in flight") {
  serve::ServerOptions o = options();
  o.batch_window_ms = 300;  // the request waits in the batcher when stop() comes
  auto s = std::make_unique<Running>(o);
  std::atomic<int> status{0};
  std::thread client([&] {
    httplib::Client c("127.0.0.1", s->port);
    c.set_read_timeout(60, 0);
    auto r = c.Post("/v1/embeddings", json({{"model", "tiny-bert"}, {"input", "hello"}}).dump(), "application/json");
    status = r ? r->status : -1;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  s.reset();  // stop() + join
  client.join();
  CHECK(status == 200);
}

namespace {

const char* kTinyLlama = "tests/data/gguf/tiny_llama.q8_0.gguf";

// A LoRA for the tiny GGUF llama (random B), once.
std::string llama_adapter_dir() {
  static const std::string dir = [] {
    const fs::path d = fixture().root / "llama_adapters";
    nn::TextModel tm = nn::TextModel::load(kTinyLlama);
    manual_seed(77);
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.target_modules = TargetModules::list({"q_proj", "v_proj", "down_proj"});
    cfg.init_lora_weights = false;
    inject_adapter_in_model(cfg, *tm.model, "default");
    save_pretrained(*tm.model, (d / "d0").string());
    return d.string();
  }();
  return dir;
}

// What `peft generate` writes for `prompt` (greedy), as the server's JSON carries it (bytes that
// are not UTF-8 as U+FFFD).
std::string reference_generation(const std::string& prompt, const std::string& adapter, int64_t max_tokens) {
  nn::TextModel tm = nn::TextModel::load(kTinyLlama);
  if (!adapter.empty()) load_adapter(*tm.model, llama_adapter_dir() + "/" + adapter, adapter);
  nn::GenerateOptions g = nn::read_generation_config(kTinyLlama);
  g.max_new_tokens = max_tokens;
  const auto ids = tm.tok().encode_batch({prompt}, true, std::nullopt, std::nullopt)[0].ids;
  Tensor out = nn::generate(*tm.model, from_vector(ids, {1, int64_t(ids.size())}), Tensor(), g);
  std::vector<int64_t> all = out.to_vector<int64_t>();
  const std::string text = tm.tok().decode(std::vector<int64_t>(all.begin() + int64_t(ids.size()), all.end()), true);
  return json::parse(json(text).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

// The text of a server-sent-events stream and its last finish_reason; [DONE] must end it.
std::pair<std::string, std::string> read_stream(httplib::Client& c, const std::string& path, const json& body, bool chat) {
  auto r = c.Post(path, body.dump(), "application/json");
  REQUIRE(r);
  REQUIRE(r->status == 200);
  CHECK(r->get_header_value("Content-Type").find("text/event-stream") == 0);
  std::string text, finish;
  size_t pos = 0;
  bool done = false;
  while ((pos = r->body.find("data: ", pos)) != std::string::npos) {
    const size_t end = r->body.find("\n\n", pos);
    REQUIRE(end != std::string::npos);
    const std::string payload = r->body.substr(pos + 6, end - pos - 6);
    pos = end + 2;
    if (payload == "[DONE]") {
      done = true;
      break;
    }
    json ev = json::parse(payload);
    REQUIRE(ev.contains("choices"));
    const json& ch = ev["choices"][0];
    if (chat && ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
    if (!chat) text += ch["text"].get<std::string>();
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  CHECK(done);
  return {text, finish};
}

}  // namespace

TEST_CASE("serve: completions and chat on a GGUF decoder equal peft generate; streaming; stop; errors") {
  serve::ServerOptions o;
  o.model = kTinyLlama;
  o.adapter_dir = llama_adapter_dir();
  o.port = 0;
  o.served_name = "tiny";
  o.chat_template = "chatml";
  o.max_tokens = 64;
  Running s(o);
  auto c = s.client();
  const std::string prompt = "hello world";
  for (const std::string adapter : {"", "d0"}) {
    CAPTURE(adapter);
    const std::string model = adapter.empty() ? "tiny" : "tiny:d0";
    const std::string want = reference_generation(prompt, adapter, 12);
    json r = post(c, "/v1/completions", {{"model", model}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}}, 200);
    CHECK(r["object"] == "text_completion");
    CHECK(r["choices"][0]["text"] == want);
    CHECK(r["usage"]["completion_tokens"].get<int64_t>() >= 1);
    CHECK(r["usage"]["total_tokens"].get<int64_t>() ==
          r["usage"]["prompt_tokens"].get<int64_t>() + r["usage"]["completion_tokens"].get<int64_t>());
    // streamed: the same text in pieces, [DONE] at the end
    auto [streamed, finish] = read_stream(
        c, "/v1/completions", {{"model", model}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}, {"stream", true}},
        false);
    CHECK(streamed == want);
    CHECK(finish == r["choices"][0]["finish_reason"]);
  }
  // a stop string: the text up to it, finish_reason "stop"
  const std::string full = reference_generation(prompt, "", 24);
  // two printable ASCII characters after the start (a request's JSON must be UTF-8)
  size_t at = std::string::npos;
  for (size_t i = 2; i + 1 < full.size() && at == std::string::npos; ++i)
    if (full[i] >= 0x21 && full[i] <= 0x7E && full[i + 1] >= 0x21 && full[i + 1] <= 0x7E) at = i;
  if (at != std::string::npos) {
    const std::string stop = full.substr(at, 2);
    json r = post(c, "/v1/completions",
                  {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"stop", stop}}, 200);
    CHECK(r["choices"][0]["text"] == full.substr(0, full.find(stop)));
    CHECK(r["choices"][0]["finish_reason"] == "stop");
    auto [streamed, finish] = read_stream(c, "/v1/completions",
                                          {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0},
                                           {"stop", json::array({stop})}, {"stream", true}},
                                          false);
    CHECK(streamed == full.substr(0, full.find(stop)));
    CHECK(finish == "stop");
  } else {
    MESSAGE("the tiny model's continuation is too short for the stop check: " << full);
  }
  // chat: the chatml rendering of the messages, generated as a completion of that text
  const std::vector<ChatMessage> msgs = {{"system", "be brief"}, {"user", "hi there"}};
  const std::string want_chat = reference_generation(render_chat("chatml", msgs, true), "d0", 10);
  json chat = post(c, "/v1/chat/completions",
                   {{"model", "tiny:d0"},
                    {"messages", {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "hi there"}}}},
                    {"max_tokens", 10},
                    {"temperature", 0}},
                   200);
  CHECK(chat["object"] == "chat.completion");
  CHECK(chat["choices"][0]["message"]["role"] == "assistant");
  CHECK(chat["choices"][0]["message"]["content"] == want_chat);
  auto [chat_streamed, chat_finish] = read_stream(
      c, "/v1/chat/completions",
      {{"model", "tiny:d0"},
       {"messages", {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "hi there"}}}},
       {"max_tokens", 10},
       {"temperature", 0},
       {"stream", true}},
      true);
  CHECK(chat_streamed == want_chat);
  CHECK(!chat_finish.empty());
  // seeded sampling is reproducible
  json s1 = post(c, "/v1/completions", {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0.9}, {"seed", 5}}, 200);
  json s2 = post(c, "/v1/completions", {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0.9}, {"seed", 5}}, 200);
  CHECK(s1["choices"][0]["text"] == s2["choices"][0]["text"]);

  struct Bad {
    const char* path;
    json body;
    const char* param;
  };
  const std::vector<Bad> bad = {
      {"/v1/completions", {{"model", "tiny"}}, "prompt"},
      {"/v1/completions", {{"model", "tiny"}, {"prompt", {1, 2}}}, "prompt"},
      {"/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 0}}, "max_tokens"},
      {"/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 65}}, "max_tokens"},  // over --max-tokens
      {"/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"temperature", 3}}, "temperature"},
      {"/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"n", 2}}, "n"},
      {"/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"stop", {"a", "b", "c", "d", "e"}}}, "stop"},
      {"/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"stream", "yes"}}, "stream"},
      {"/v1/chat/completions", {{"model", "tiny"}, {"messages", "hi"}}, "messages"},
      {"/v1/chat/completions", {{"model", "tiny"}, {"messages", {{{"role", "user"}}}}}, "messages"},
      {"/v1/embeddings", {{"model", "tiny"}, {"input", "x"}}, "model"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.body.dump());
    CHECK(post(c, b.path, b.body, 400)["error"]["param"] == b.param);
  }
  // the context: prompt + max_tokens beyond the model's positions
  serve::ServerOptions big = o;
  big.max_tokens = 1 << 20;
  Running sbig(big);
  auto c2 = sbig.client();
  CHECK(post(c2, "/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 1 << 19}}, 400)["error"]["message"]
            .get<std::string>()
            .find("context") != std::string::npos);
  // no chat template of its own, none given: chat is a 400 naming messages
  serve::ServerOptions plain = o;
  plain.chat_template.clear();
  Running splain(plain);
  auto c3 = splain.client();
  CHECK(post(c3, "/v1/chat/completions", {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}}, 400)
            ["error"]["param"] == "messages");
}
