// The HTTP side is cpp-httplib's server (a thread per connection from its pool); one batcher
// thread owns every forward. Handlers validate a request, queue its texts as jobs and wait; the
// batcher takes the first job, waits up to batch_window_ms for more (up to max_batch texts),
// loads the adapters they name and runs them as one forward: one adapter (or the base) for all
// rows -> that adapter active, padding skipped, the same computation as `peft embed`; several ->
// PEFT's mixed batch, each row through its own adapter.
#include "serve/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "adapters/lora/layer.h"
#include "adapters/tuner.h"
#include "adapters/utilities.h"
#include "io/chat_template.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/text_model.h"
#include "runtime/autograd.h"
#include "runtime/error.h"
#include "runtime/ops.h"
#include "serve/adapter_registry.h"
#include "serve/errors.h"
#include "serve/metrics.h"

namespace peft::serve {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string ServeError::type() const {
  switch (status_) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "conflict_error";
    case 413: return "request_too_large";
    case 503: return "overloaded_error";
    default: return status_ >= 500 ? "server_error" : "invalid_request_error";
  }
}

namespace {

struct Job {
  std::vector<std::string> texts;
  std::string adapter;  // "" : the base model
  struct Result {
    Tensor embeddings;  // [n, H] float32
    int64_t tokens = 0;
  };
  std::promise<Result> done;
};

std::string base64(const void* data, size_t n) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* p = static_cast<const unsigned char*>(data);
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    const uint32_t v = uint32_t(p[i]) << 16 | (i + 1 < n ? uint32_t(p[i + 1]) << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    out += tbl[v >> 18 & 63];
    out += tbl[v >> 12 & 63];
    out += i + 1 < n ? tbl[v >> 6 & 63] : '=';
    out += i + 2 < n ? tbl[v & 63] : '=';
  }
  return out;
}

// Generated text may hold bytes that are not UTF-8 (a byte-level vocabulary decodes whatever the
// model picks): written as U+FFFD rather than failing the reply.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, const ServeError& e) {
  json err = {{"message", e.what()}, {"type", e.type()}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param().empty()) err["param"] = e.param();
  if (!e.code().empty()) err["code"] = e.code();
  send_json(res, e.status(), {{"error", err}});
}

json parse_body(const httplib::Request& req) {
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw ServeError(400, std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw ServeError(400, "the request body must be a JSON object");
  return body;
}

// A string field: required, or "" when absent and not required.
std::string string_field(const json& body, const char* name, bool required) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) {
    if (required) throw ServeError(400, std::string("'") + name + "' is required", name);
    return "";
  }
  if (!it->is_string()) throw ServeError(400, std::string("'") + name + "' must be a string, got " + it->type_name(), name);
  return it->get<std::string>();
}

thread_local Clock::time_point t_request_start;

}  // namespace

struct Server::Impl {
  ServerOptions o;
  std::string name;
  nn::TextModel tm;
  std::mutex model_mu;  // every forward and every change of the model's adapters
  std::unique_ptr<AdapterRegistry> reg;
  std::mutex reg_mu;  // the registry's bookkeeping (handlers look names up while a batch runs)
  Metrics metrics;
  bool decoder = false;
  nn::GenerateOptions gen_defaults;  // EOS ids, pad (generation_config.json or the GGUF's)
  std::string chat_template;
  std::atomic<uint64_t> next_id{1};
  httplib::Server http;
  int port = -1;
  int listen_fd = -1;  // the listening socket (httplib's socket_t on POSIX)

  std::mutex q_mu;
  std::condition_variable q_cv;
  std::deque<std::shared_ptr<Job>> queue;
  bool draining = false;
  std::thread batcher;

  explicit Impl(ServerOptions opts) : o(std::move(opts)) {
    if (o.model.empty()) fail("peft serve: --model is required");
    if (o.max_batch < 1) fail("peft serve: --max-batch must be at least 1");
    tm = nn::TextModel::load(o.model);
    (void)tm.tok();  // a folder without tokenizer.json fails here, naming it
    decoder = tm.model->is_decoder();
    if (decoder) {
      gen_defaults = nn::read_generation_config(o.model);
      chat_template = o.chat_template.empty() ? tm.chat_template : o.chat_template;
      if (!chat_template.empty()) (void)detect_chat_format(chat_template);  // unknown formats fail at start
    }
    tm.model->eval();
    name = o.served_name;
    if (name.empty()) {
      fs::path p = fs::path(o.model);
      if (p.filename().empty()) p = p.parent_path();
      name = fs::is_regular_file(p) ? p.stem().string() : p.filename().string();  // a .gguf file: without the suffix
    }
    if (name.empty() || name.find(':') != std::string::npos)
      fail("peft serve: the served name '", name, "' must be non-empty without ':' (--served-name)");
    reg = std::make_unique<AdapterRegistry>(*tm.model, o.adapter_dir, o.max_loaded_adapters, o.pinned);
    if (!o.pinned.empty()) {
      std::lock_guard<std::mutex> m(model_mu);
      std::lock_guard<std::mutex> r(reg_mu);
      reg->ensure_loaded(o.pinned);
    }
    routes();
    batcher = std::thread([this] { batch_loop(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> l(q_mu);
      draining = true;
    }
    q_cv.notify_all();
    if (batcher.joinable()) batcher.join();
  }

  // ------------------------------------------------------------------ batching --
  void batch_loop() {
    for (;;) {
      std::vector<std::shared_ptr<Job>> batch;
      {
        std::unique_lock<std::mutex> lk(q_mu);
        q_cv.wait(lk, [&] { return !queue.empty() || draining; });
        if (queue.empty()) return;  // draining and nothing left
        int64_t n = 0;
        const auto deadline = Clock::now() + std::chrono::milliseconds(o.batch_window_ms);
        for (;;) {
          if (queue.empty()) {
            if (o.batch_window_ms <= 0 || draining) break;
            if (!q_cv.wait_until(lk, deadline, [&] { return !queue.empty() || draining; })) break;
            if (queue.empty()) break;
          }
          const int64_t next = int64_t(queue.front()->texts.size());
          if (!batch.empty() && n + next > o.max_batch) break;
          batch.push_back(queue.front());
          queue.pop_front();
          n += next;
          if (n >= o.max_batch) break;
        }
      }
      run_batch(batch);
    }
  }

  void run_batch(std::vector<std::shared_ptr<Job>>& batch) {
    const auto t0 = Clock::now();
    std::lock_guard<std::mutex> m(model_mu);
    // load what the batch names; a job whose adapter fails gets that error, the others run
    std::vector<std::string> adapters;
    for (const auto& j : batch)
      if (!j->adapter.empty() && std::find(adapters.begin(), adapters.end(), j->adapter) == adapters.end())
        adapters.push_back(j->adapter);
    std::vector<std::shared_ptr<Job>> ok;
    {
      std::lock_guard<std::mutex> r(reg_mu);
      try {
        reg->ensure_loaded(adapters);
        ok = batch;
      } catch (...) {
        // find which: one at a time (those before the failing one stay loaded)
        for (const auto& j : batch) {
          try {
            if (!j->adapter.empty()) reg->ensure_loaded({j->adapter});
            ok.push_back(j);
          } catch (...) {
            j->done.set_exception(std::current_exception());
          }
        }
      }
    }
    if (ok.empty()) return;
    // rows of one adapter next to each other: the mixed batch then runs each adapter's product
    // on one slice of the rows (adapters/lora/layer.cpp), not on gathered copies
    std::stable_sort(ok.begin(), ok.end(), [](const auto& a, const auto& b) { return a->adapter < b->adapter; });
    std::vector<std::string> texts, rows;
    for (const auto& j : ok)
      for (const auto& t : j->texts) texts.push_back(t), rows.push_back(j->adapter.empty() ? "__base__" : j->adapter);
    std::vector<std::string> distinct;
    for (const auto& r : rows)
      if (std::find(distinct.begin(), distinct.end(), r) == distinct.end()) distinct.push_back(r);
    try {
      NoGradGuard ng;
      nn::ModelInputs in = tm.batch(texts);
      Tensor e;
      if (distinct.size() == 1) {
        // one adapter for every row: it alone active, padding skipped (as `peft embed`)
        in.skip_padding = true;
        if (distinct[0] == "__base__") {
          if (reg->loaded_count() > 0) {
            DisableAdapterGuard off(*tm.model);
            e = tm.embed(in);
          } else {
            e = tm.embed(in);
          }
        } else {
          set_adapter(*tm.model, distinct[0], /*inference_mode=*/true);
          e = tm.embed(in);
        }
      } else if (token_rows_ok()) {
        // PEFT's mixed batch with padding skipped: the encoder's token-wise layers see the real
        // tokens as rows [N, H] (row-major), so each token takes its text's adapter; with no
        // padding they see [B, T, H] and the names are per text
        in.skip_padding = true;
        const std::vector<int64_t> mask = in.attention_mask.to(DType::int64).to_vector<int64_t>();
        const int64_t T = in.attention_mask.size(1);
        std::vector<std::string> per_token;
        for (size_t b = 0; b < rows.size(); ++b)
          for (int64_t t = 0; t < T; ++t)
            if (mask[b * size_t(T) + size_t(t)] != 0) per_token.push_back(rows[b]);
        const bool padded = per_token.size() < rows.size() * size_t(T);
        e = forward_mixed_batch(*tm.model, padded ? per_token : rows, [&] { return tm.embed(in); });
      } else {
        // an adapter on the embeddings sees [B, T] ids: every layer gets the padded [B, T, ...]
        in.skip_padding = false;
        e = forward_mixed_batch(*tm.model, rows, [&] { return tm.embed(in); });
      }
      e = e.to(DType::float32).contiguous();
      const std::vector<int64_t> mask = in.attention_mask.to(DType::int64).to_vector<int64_t>();
      const int64_t T = in.attention_mask.size(1);
      int64_t row = 0, total_tokens = 0;
      for (const auto& j : ok) {
        Job::Result res;
        const int64_t n = int64_t(j->texts.size());
        res.embeddings = e.narrow(0, row, n).contiguous();
        for (int64_t i = row * T; i < (row + n) * T; ++i) res.tokens += mask[size_t(i)];
        total_tokens += res.tokens;
        row += n;
        j->done.set_value(std::move(res));
      }
      metrics.embedded(int64_t(texts.size()), total_tokens);
    } catch (...) {
      for (const auto& j : ok) {
        try {
          j->done.set_exception(std::current_exception());
        } catch (const std::future_error&) {  // already answered
        }
      }
    }
    metrics.batch(int64_t(texts.size()), int64_t(distinct.size()),
                  std::chrono::duration<double>(Clock::now() - t0).count());
  }

  // Whether every adapter layer of the model wraps a token-wise layer (no lora.Embedding), so a
  // mixed batch may skip padding. Asked with model_mu held.
  bool token_rows_ok() {
    for (const auto& [n, m] : tm.model->named_modules())
      if (dynamic_cast<const lora::Embedding*>(m.get())) return false;
    return true;
  }

  std::future<Job::Result> submit(std::vector<std::string> texts, const std::string& adapter) {
    auto j = std::make_shared<Job>();
    j->texts = std::move(texts);
    j->adapter = adapter;
    auto f = j->done.get_future();
    {
      std::lock_guard<std::mutex> l(q_mu);
      if (draining) throw ServeError(503, "the server is shutting down");
      queue.push_back(std::move(j));
    }
    q_cv.notify_one();
    return f;
  }

  // -------------------------------------------------------------------- routes --
  // "BASE" -> "", "BASE:ADAPTER" -> "ADAPTER" (known, or ServeError 404).
  std::string adapter_of(const std::string& model) {
    const size_t colon = model.find(':');
    const std::string base = model.substr(0, colon);
    if (base != name)
      throw ServeError(404, "The model '" + model + "' does not exist (this server has '" + name + "' and '" + name +
                                ":ADAPTER')",
                       "model", "model_not_found");
    if (colon == std::string::npos) return "";
    const std::string a = model.substr(colon + 1);
    std::lock_guard<std::mutex> r(reg_mu);
    (void)reg->folder(a);
    return a;
  }

  void embeddings(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req);
    if (decoder)
      throw ServeError(400, "'" + name + "' is a decoder: it serves /v1/completions and /v1/chat/completions, not embeddings",
                       "model");
    const std::string adapter = adapter_of(string_field(body, "model", true));
    std::vector<std::string> texts;
    auto it = body.find("input");
    if (it == body.end() || it->is_null()) throw ServeError(400, "'input' is required", "input");
    if (it->is_string()) {
      texts.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      if (it->empty()) throw ServeError(400, "'input' is an empty array", "input");
      if (int64_t(it->size()) > o.max_inputs)
        throw ServeError(400, "'input' has " + std::to_string(it->size()) + " texts; at most " +
                                  std::to_string(o.max_inputs) + " per request",
                         "input");
      for (size_t i = 0; i < it->size(); ++i) {
        const json& v = (*it)[i];
        if (!v.is_string())
          throw ServeError(400, "'input[" + std::to_string(i) + "]' must be a string, got " + v.type_name() +
                                    (v.is_array() || v.is_number() ? " (token ids are not accepted; send text)" : ""),
                           "input");
        texts.push_back(v.get<std::string>());
      }
    } else {
      throw ServeError(400, std::string("'input' must be a string or an array of strings, got ") + it->type_name(), "input");
    }
    for (size_t i = 0; i < texts.size(); ++i) {
      if (texts[i].empty()) throw ServeError(400, "'input[" + std::to_string(i) + "]' is an empty string", "input");
      if (texts[i].size() > o.max_input_bytes)
        throw ServeError(400, "'input[" + std::to_string(i) + "]' has " + std::to_string(texts[i].size()) +
                                  " bytes; at most " + std::to_string(o.max_input_bytes),
                         "input");
    }
    const std::string format = string_field(body, "encoding_format", false);
    if (!format.empty() && format != "float" && format != "base64")
      throw ServeError(400, "'encoding_format' must be 'float' or 'base64', got '" + format + "'", "encoding_format");
    if (auto d = body.find("dimensions"); d != body.end() && !d->is_null()) {
      const int64_t H = tm.model->config().value("hidden_size", int64_t(-1));
      if (!d->is_number_integer() || d->get<int64_t>() != H)
        throw ServeError(400, "'dimensions' must be the model's " + std::to_string(H) + " (no truncation)", "dimensions");
    }
    // texts beyond max_batch go as several jobs, in order
    std::vector<std::future<Job::Result>> parts;
    for (size_t i = 0; i < texts.size(); i += size_t(o.max_batch)) {
      const size_t end = std::min(texts.size(), i + size_t(o.max_batch));
      parts.push_back(submit(std::vector<std::string>(texts.begin() + ptrdiff_t(i), texts.begin() + ptrdiff_t(end)), adapter));
    }
    json data = json::array();
    int64_t tokens = 0, index = 0;
    for (auto& f : parts) {
      Job::Result r = f.get();  // rethrows the batch's error
      tokens += r.tokens;
      const int64_t H = r.embeddings.size(1);
      const std::vector<float> v = r.embeddings.to_vector<float>();
      for (int64_t i = 0; i < r.embeddings.size(0); ++i, ++index) {
        json item = {{"object", "embedding"}, {"index", index}};
        if (format == "base64") item["embedding"] = base64(v.data() + i * H, size_t(H) * sizeof(float));
        else item["embedding"] = std::vector<float>(v.begin() + i * H, v.begin() + (i + 1) * H);
        data.push_back(std::move(item));
      }
    }
    send_json(res, 200,
              {{"object", "list"},
               {"data", std::move(data)},
               {"model", body["model"]},
               {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}});
  }

  json model_list() {
    json data = json::array();
    data.push_back({{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "peft.cpp"}});
    std::lock_guard<std::mutex> r(reg_mu);
    for (const auto& e : reg->list())
      data.push_back({{"id", name + ":" + e.name},
                      {"object", "model"},
                      {"created", 0},
                      {"owned_by", "peft.cpp"},
                      {"parent", name},
                      {"loaded", e.loaded},
                      {"pinned", e.pinned}});
    return {{"object", "list"}, {"data", data}};
  }

  static std::string endpoint_label(const std::string& path) {
    for (const char* p : {"/v1/embeddings", "/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics"})
      if (path == p) return p;
    if (path == "/v1/adapters") return path;
    if (path.rfind("/v1/adapters/", 0) == 0) return "/v1/adapters/{name}";
    return "other";
  }

  void guarded(const httplib::Request& req, httplib::Response& res,
               void (Impl::*h)(const httplib::Request&, httplib::Response&)) {
    try {
      (this->*h)(req, res);
    } catch (const ServeError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, ServeError(500, std::string("internal error: ") + e.what()));
    }
  }

  void routes() {
    http.new_task_queue = [n = std::max(1, o.http_threads)] { return new httplib::ThreadPool(size_t(n)); };
    // httplib (as Debian builds it) listens with a backlog of 5: a burst of clients beyond that
    // saw connections reset. The listening socket passes through here before bind; bind() then
    // listens on it again with a longer queue.
    http.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_fd = sock;
    });
    http.set_payload_max_length(o.max_body_bytes);
    // httplib writes a response's headers and body separately: without TCP_NODELAY, Nagle's
    // algorithm and the client's delayed ACK held each one ~40 ms (p50 103 ms for one sentence)
    http.set_tcp_nodelay(true);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      t_request_start = Clock::now();
      if (!o.api_key.empty() && req.get_header_value("Authorization") != "Bearer " + o.api_key) {
        send_error(res, ServeError(401, "a valid API key is required: Authorization: Bearer KEY"));
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      metrics.request(endpoint_label(req.path), res.status,
                      std::chrono::duration<double>(Clock::now() - t_request_start).count());
    });
    // an error status with no body yet (unknown route, body over the limit): OpenAI's shape
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404) send_error(res, ServeError(404, "no route " + req.method + " " + req.path));
      else if (res.status == 413) send_error(res, ServeError(413, "the request body is over the size limit (--max-body-bytes)"));
      else send_error(res, ServeError(res.status, "HTTP " + std::to_string(res.status)));
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, ServeError(500, "internal error: " + what));
    });
    http.Post("/v1/embeddings", [this](const httplib::Request& q, httplib::Response& r) { guarded(q, r, &Impl::embeddings); });
    http.Get("/v1/models", [this](const httplib::Request& q, httplib::Response& r) {
      guarded(q, r, &Impl::models_route);
    });
    http.Post("/v1/adapters", [this](const httplib::Request& q, httplib::Response& r) { guarded(q, r, &Impl::add_adapter); });
    http.Delete(R"(/v1/adapters/([^/]+))",
                [this](const httplib::Request& q, httplib::Response& r) { guarded(q, r, &Impl::delete_adapter_route); });
    http.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) {
      guarded(q, r, decoder ? &Impl::completions : &Impl::not_decoder);
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) {
      guarded(q, r, decoder ? &Impl::chat_completions : &Impl::not_decoder);
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
      send_json(r, 200, {{"status", "ok"}, {"model", name}});
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
      int64_t loads, evictions;
      size_t loaded;
      {
        std::lock_guard<std::mutex> g(reg_mu);
        loads = reg->loads(), evictions = reg->evictions(), loaded = reg->loaded_count();
      }
      r.set_content(metrics.render(loads, evictions, loaded), "text/plain; version=0.0.4");
    });
  }

  // ---------------------------------------------------------------- decoding --
  struct GenRequest {
    std::string adapter;  // "" : the base
    std::vector<int64_t> prompt_ids;
    nn::GenerateOptions opts;
    std::vector<std::string> stop;
  };
  struct Completion {
    std::string text, finish_reason;
    int64_t prompt_tokens = 0, completion_tokens = 0;
  };
  struct StopGeneration {};  // thrown from generate's step callback to end early

  // The request's sampling fields, validated (400 naming the field); the prompt is tokenized here
  // (before any stream starts) so that its length can be checked against the model's context.
  GenRequest gen_request(const json& body, const std::string& prompt, const std::string& adapter) {
    GenRequest g;
    g.adapter = adapter;
    g.opts = gen_defaults;
    auto number = [&](const char* field, double def, double lo, double hi) {
      auto it = body.find(field);
      if (it == body.end() || it->is_null()) return def;
      if (!it->is_number()) throw ServeError(400, std::string("'") + field + "' must be a number, got " + it->type_name(), field);
      const double v = it->get<double>();
      if (!(v >= lo && v <= hi)) {
        char range[64];
        std::snprintf(range, sizeof range, "[%g, %g]", lo, hi);
        throw ServeError(400, std::string("'") + field + "' must be in " + range, field);
      }
      return v;
    };
    const char* mt = body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    auto it = body.find(mt);
    int64_t max_tokens = 16;  // OpenAI's default for completions
    if (it != body.end() && !it->is_null()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 1)
        throw ServeError(400, std::string("'") + mt + "' must be a positive integer", mt);
      max_tokens = it->get<int64_t>();
    }
    if (max_tokens > o.max_tokens)
      throw ServeError(400, std::string("'") + mt + "' is " + std::to_string(max_tokens) + "; this server allows at most " +
                                std::to_string(o.max_tokens) + " (--max-tokens)",
                       mt);
    const double temperature = number("temperature", 1.0, 0.0, 2.0);
    const double top_p = number("top_p", 1.0, 0.0, 1.0);
    if (top_p <= 0) throw ServeError(400, "'top_p' must be above 0", "top_p");
    for (const char* f : {"frequency_penalty", "presence_penalty"})
      if (number(f, 0.0, -2.0, 2.0) != 0.0) throw ServeError(400, std::string("'") + f + "' is not supported (only 0)", f);
    if (auto n = body.find("n"); n != body.end() && !n->is_null() && (!n->is_number_integer() || n->get<int64_t>() != 1))
      throw ServeError(400, "'n' must be 1 (one choice per request)", "n");
    if (auto lp = body.find("logprobs"); lp != body.end() && !lp->is_null() && !(lp->is_boolean() && !lp->get<bool>()))
      throw ServeError(400, "'logprobs' is not supported", "logprobs");
    g.opts.max_new_tokens = max_tokens;
    g.opts.do_sample = temperature > 0;  // 0: greedy, as OpenAI's deterministic setting
    g.opts.temperature = temperature > 0 ? temperature : 1.0;
    g.opts.top_p = top_p;
    g.opts.top_k = 0;
    if (auto sd = body.find("seed"); sd != body.end() && !sd->is_null()) {
      if (!sd->is_number_integer()) throw ServeError(400, "'seed' must be an integer", "seed");
      g.opts.seed = uint64_t(sd->get<int64_t>());
    } else {
      g.opts.seed = next_id.fetch_add(1) * 0x9E3779B97F4A7C15ull;  // a different stream per request
    }
    if (auto st = body.find("stop"); st != body.end() && !st->is_null()) {
      if (st->is_string()) g.stop.push_back(st->get<std::string>());
      else if (st->is_array() && st->size() <= 4) {
        for (const auto& v : *st) {
          if (!v.is_string()) throw ServeError(400, "'stop' must be a string or up to 4 strings", "stop");
          g.stop.push_back(v.get<std::string>());
        }
      } else {
        throw ServeError(400, "'stop' must be a string or up to 4 strings", "stop");
      }
      for (const auto& s : g.stop)
        if (s.empty()) throw ServeError(400, "'stop' holds an empty string", "stop");
    }
    if (prompt.size() > o.max_input_bytes * 16)
      throw ServeError(400, "the prompt has " + std::to_string(prompt.size()) + " bytes; at most " +
                                std::to_string(o.max_input_bytes * 16),
                       "prompt");
    // as `peft generate`: special tokens added as the model wants, the chat markers parsed
    g.prompt_ids = tm.tok().encode_batch({prompt}, true, std::nullopt, std::nullopt)[0].ids;
    if (g.prompt_ids.empty()) throw ServeError(400, "the prompt encodes to no tokens", "prompt");
    const int64_t ctx = tm.model->max_positions();
    if (int64_t(g.prompt_ids.size()) + max_tokens > ctx)
      throw ServeError(400, "the prompt's " + std::to_string(g.prompt_ids.size()) + " tokens plus " + mt + " " +
                                std::to_string(max_tokens) + " exceed the model's context of " + std::to_string(ctx),
                       mt);
    return g;
  }

  // One generation with the model to itself. emit(delta) streams text as it becomes final (text
  // that could still turn out to start a stop string is held back); it returns false when the
  // client has gone, which ends the generation.
  Completion complete(const GenRequest& g, const std::function<bool(const std::string&)>& emit) {
    std::lock_guard<std::mutex> m(model_mu);
    if (!g.adapter.empty()) {
      std::lock_guard<std::mutex> r(reg_mu);
      reg->ensure_loaded({g.adapter});
    }
    std::optional<DisableAdapterGuard> off;
    if (g.adapter.empty()) {
      if (reg->loaded_count() > 0) off.emplace(*tm.model);
    } else {
      set_adapter(*tm.model, g.adapter, /*inference_mode=*/true);
    }
    const auto t0 = Clock::now();
    const Tokenizer& tok = tm.tok();
    Completion c;
    c.prompt_tokens = int64_t(g.prompt_ids.size());
    std::vector<int64_t> gen;
    std::string sent;  // what emit has been given
    size_t hold = 0;   // a stop string's length - 1: the tail that may not be final yet
    for (const auto& s : g.stop) hold = std::max(hold, s.size() - 1);
    bool stopped = false;
    auto text_now = [&] {
      std::string t = tok.decode(gen, true);
      for (const auto& s : g.stop)
        if (size_t p = t.find(s); p != std::string::npos) t.resize(p), stopped = true;
      return t;
    };
    auto flush = [&](const std::string& t, bool final) {
      const size_t upto = final || stopped ? t.size() : (t.size() > hold ? t.size() - hold : 0);
      if (upto > sent.size() && t.compare(0, sent.size(), sent) == 0) {
        const std::string delta = t.substr(sent.size(), upto - sent.size());
        // a token's bytes may end inside a UTF-8 character: wait for the rest
        size_t cut = delta.size();
        for (size_t back = 0; back < std::min<size_t>(4, delta.size()); ++back) {
          const unsigned char ch = static_cast<unsigned char>(delta[delta.size() - 1 - back]);
          if ((ch & 0xC0) == 0x80) continue;  // continuation byte
          const size_t need = ch >= 0xF0 ? 4 : ch >= 0xE0 ? 3 : ch >= 0xC0 ? 2 : 1;
          if (need > back + 1 && !final) cut = delta.size() - 1 - back;
          break;
        }
        if (cut == 0) return true;
        sent += delta.substr(0, cut);
        if (emit && !emit(delta.substr(0, cut))) return false;
      }
      return true;
    };
    Tensor input = from_vector(g.prompt_ids, {1, int64_t(g.prompt_ids.size())});
    try {
      nn::generate(*tm.model, input, Tensor(), g.opts, [&](const std::vector<int64_t>& step) {
        gen.push_back(step[0]);
        const std::string t = text_now();
        if (!flush(t, false)) throw StopGeneration{};  // the client went away
        if (stopped) throw StopGeneration{};
      });
    } catch (const StopGeneration&) {
    }
    const std::string t = text_now();
    flush(t, true);
    c.text = t;
    c.completion_tokens = int64_t(gen.size());
    const bool eos = !gen.empty() && std::find(g.opts.eos_token_ids.begin(), g.opts.eos_token_ids.end(), gen.back()) !=
                                         g.opts.eos_token_ids.end();
    c.finish_reason = stopped || eos ? "stop" : "length";
    metrics.embedded(0, c.prompt_tokens + c.completion_tokens);
    metrics.batch(1, 1, std::chrono::duration<double>(Clock::now() - t0).count());
    return c;
  }

  // Runs `g`, as one JSON reply or as server-sent events (OpenAI's chunks, then [DONE]).
  void respond(const json& body, GenRequest g, bool chat, httplib::Response& res) {
    const std::string id = std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id.fetch_add(1));
    const int64_t created = int64_t(std::time(nullptr));
    const json model = body["model"];
    const char* object = chat ? "chat.completion" : "text_completion";
    auto sb = body.find("stream");
    if (sb != body.end() && !sb->is_null() && !sb->is_boolean()) throw ServeError(400, "'stream' must be a boolean", "stream");
    if (sb == body.end() || !sb->is_boolean() || !sb->get<bool>()) {
      Completion c = complete(g, {});
      json choice = {{"index", 0}, {"finish_reason", c.finish_reason}, {"logprobs", nullptr}};
      if (chat) choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      else choice["text"] = c.text;
      send_json(res, 200,
                {{"id", id},
                 {"object", object},
                 {"created", created},
                 {"model", model},
                 {"choices", json::array({choice})},
                 {"usage",
                  {{"prompt_tokens", c.prompt_tokens},
                   {"completion_tokens", c.completion_tokens},
                   {"total_tokens", c.prompt_tokens + c.completion_tokens}}}});
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto shared = std::make_shared<GenRequest>(std::move(g));
    res.set_chunked_content_provider(
        "text/event-stream", [this, shared, id, created, model, chat](size_t, httplib::DataSink& sink) {
          const char* chunk_object = chat ? "chat.completion.chunk" : "text_completion";
          auto event = [&](const json& choice) {
            const std::string s = "data: " +
                                  dump(json({{"id", id}, {"object", chunk_object}, {"created", created}, {"model", model},
                                             {"choices", json::array({choice})}})) +
                                  "\n\n";
            return sink.write(s.data(), s.size());
          };
          bool alive = true;
          if (chat) alive = event({{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"finish_reason", nullptr}});
          try {
            Completion c = complete(*shared, [&](const std::string& delta) {
              json choice = {{"index", 0}, {"finish_reason", nullptr}};
              if (chat) choice["delta"] = {{"content", delta}};
              else choice["text"] = delta;
              return alive = alive && event(choice);
            });
            if (alive) {
              json last = {{"index", 0}, {"finish_reason", c.finish_reason}};
              if (chat) last["delta"] = json::object();
              else last["text"] = "";
              event(last);
              const std::string done = "data: [DONE]\n\n";
              sink.write(done.data(), done.size());
            }
          } catch (const ServeError& e) {
            const std::string s = "data: " + dump(json({{"error", {{"message", e.what()}, {"type", e.type()}}}})) + "\n\n";
            sink.write(s.data(), s.size());
          } catch (const std::exception& e) {
            const std::string s = "data: " +
                                  dump(json({{"error", {{"message", std::string("internal error: ") + e.what()},
                                                        {"type", "server_error"}}}})) +
                                  "\n\n";
            sink.write(s.data(), s.size());
          }
          sink.done();
          return true;
        });
  }

  void completions(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req);
    const std::string adapter = adapter_of(string_field(body, "model", true));
    auto p = body.find("prompt");
    if (p == body.end() || p->is_null()) throw ServeError(400, "'prompt' is required", "prompt");
    std::string prompt;
    if (p->is_string()) prompt = p->get<std::string>();
    else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) prompt = (*p)[0].get<std::string>();
    else throw ServeError(400, "'prompt' must be a string (or an array of one string; token ids are not accepted)", "prompt");
    if (prompt.empty()) throw ServeError(400, "'prompt' is an empty string", "prompt");
    respond(body, gen_request(body, prompt, adapter), false, res);
  }

  void chat_completions(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req);
    const std::string adapter = adapter_of(string_field(body, "model", true));
    auto ms = body.find("messages");
    if (ms == body.end() || !ms->is_array() || ms->empty())
      throw ServeError(400, "'messages' must be a non-empty array of {\"role\", \"content\"}", "messages");
    std::vector<ChatMessage> msgs;
    for (size_t i = 0; i < ms->size(); ++i) {
      const json& m = (*ms)[i];
      const std::string at = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) throw ServeError(400, "'" + at + "' must be an object", "messages");
      auto role = m.find("role");
      if (role == m.end() || !role->is_string()) throw ServeError(400, "'" + at + ".role' must be a string", "messages");
      auto content = m.find("content");
      std::string text;
      if (content != m.end() && content->is_string()) {
        text = content->get<std::string>();
      } else if (content != m.end() && content->is_array()) {  // [{"type": "text", "text": ...}, ...]
        for (const auto& part : *content) {
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
            throw ServeError(400, "'" + at + ".content' parts must be {\"type\": \"text\", \"text\": ...}", "messages");
          text += part["text"].get<std::string>();
        }
      } else {
        throw ServeError(400, "'" + at + ".content' must be a string or an array of text parts", "messages");
      }
      msgs.push_back({role->get<std::string>(), text});
    }
    if (chat_template.empty())
      throw ServeError(400, "'" + name + "' has no chat template (start the server with --chat-template NAME)", "messages");
    std::string prompt;
    try {
      prompt = render_chat(chat_template, msgs, /*add_generation_prompt=*/true);
    } catch (const std::exception& e) {
      throw ServeError(400, std::string("the messages do not fit the chat template: ") + e.what(), "messages");
    }
    respond(body, gen_request(body, prompt, adapter), true, res);
  }

  void models_route(const httplib::Request&, httplib::Response& res) { send_json(res, 200, model_list()); }

  void add_adapter(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req);
    const std::string n = string_field(body, "name", true), p = string_field(body, "path", true);
    AdapterRegistry::Entry e;
    {
      std::lock_guard<std::mutex> r(reg_mu);
      e = reg->add(n, p);
    }
    send_json(res, 201, {{"id", name + ":" + e.name}, {"object", "adapter"}, {"name", e.name}, {"loaded", e.loaded}});
  }

  void delete_adapter_route(const httplib::Request& req, httplib::Response& res) {
    const std::string n = req.matches[1];
    {
      std::lock_guard<std::mutex> m(model_mu);  // waits for the running batch
      std::lock_guard<std::mutex> r(reg_mu);
      reg->remove(n);
    }
    send_json(res, 200, {{"id", name + ":" + n}, {"object", "adapter"}, {"deleted", true}});
  }

  void not_decoder(const httplib::Request& req, httplib::Response&) {
    throw ServeError(400, "'" + name + "' is an encoder: it serves POST /v1/embeddings, not " + req.path, "model");
  }
};

Server::Server(ServerOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {}
Server::~Server() = default;

const std::string& Server::name() const { return impl_->name; }
bool Server::is_decoder() const { return impl_->decoder; }

int Server::bind() {
  Impl& s = *impl_;
  if (s.o.port == 0) {
    s.port = s.http.bind_to_any_port(s.o.host);
    if (s.port < 0) fail("peft serve: cannot bind ", s.o.host, " (any port)");
  } else {
    if (!s.http.bind_to_port(s.o.host, s.o.port))
      fail("peft serve: cannot bind ", s.o.host, ":", s.o.port, " (in use, or a host this machine does not have)");
    s.port = s.o.port;
  }
  if (s.listen_fd >= 0) ::listen(s.listen_fd, SOMAXCONN);
  return s.port;
}

void Server::run() {
  if (impl_->port < 0) fail("peft serve: run() before bind()");
  impl_->http.listen_after_bind();  // returns after stop(), once the requests in flight are answered
}

void Server::stop() { impl_->http.stop(); }

}  // namespace peft::serve
