// `peft serve` as a library: an OpenAI-compatible HTTP endpoint over one base model and many
// PEFT adapters, each request naming its adapter ("model": "BASE:ADAPTER").
//
//   peft::serve::ServerOptions o;
//   o.model = "all-MiniLM-L6-v2";  o.adapter_dir = "adapters";  o.port = 0;  // any free port
//   peft::serve::Server s(o);      // loads the model
//   int port = s.bind();           // listening now
//   std::thread t([&] { s.run(); });
//   ...                            // POST http://127.0.0.1:PORT/v1/embeddings
//   s.stop(); t.join();            // finishes the requests in flight first
//
// Endpoints:
//   POST /v1/embeddings       encoders: {"model": "BASE" | "BASE:ADAPTER", "input": "text" | ["text", ...],
//                              "encoding_format": "float" | "base64"}
//   POST /v1/completions      decoders: {"model", "prompt", "max_tokens", "temperature" (0: greedy),
//                              "top_p", "seed", "stop", "stream" (server-sent events)}
//   POST /v1/chat/completions decoders: {"model", "messages": [{"role", "content"}], ...} rendered
//                              with the model's chat template (or --chat-template)
//   GET  /v1/models           the base and every adapter known (loaded or not)
//   POST /v1/adapters         {"name", "path"}: registers a folder inside the adapter directory
//   DELETE /v1/adapters/NAME  unloads and forgets it
//   GET  /health, GET /metrics (Prometheus text)
// Embedding requests that arrive within batch_window_ms of each other run as one forward of up
// to max_batch texts, each row with its own adapter (a mixed batch). Generations run one at a
// time, in arrival order (not batched yet). Adapters under adapter_dir
// load on first use into an LRU of max_loaded_adapters (`pinned` never evicted).
// Errors are OpenAI's {"error": {"message", "type", "param", "code"}} with 400 (malformed
// request, naming the field), 401 (api_key set and missing), 403 (a path outside the adapter
// directory), 404 (unknown model or adapter), 413 (body over max_body_bytes).
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace peft::serve {

struct ServerOptions {
  std::string model;        // a Hugging Face encoder folder (config.json, weights, tokenizer.json)
  std::string adapter_dir;  // "" : no adapters
  std::vector<std::string> pinned;  // adapter names loaded at start and never evicted
  size_t max_loaded_adapters = 16;
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (bind() returns it)
  std::string api_key;  // "" : no authentication
  int64_t max_batch = 64;     // texts per forward
  int batch_window_ms = 5;    // how long a batch waits for more requests (0: never)
  size_t max_body_bytes = size_t(8) << 20;
  int64_t max_inputs = 2048;  // texts per request
  size_t max_input_bytes = 1 << 16;  // bytes per text (longer ones are refused, not cut)
  int http_threads = 32;      // connections served at once
  std::string served_name;    // the base's name in "model" (default: the folder's name)
  int64_t max_tokens = 4096;  // decoders: the most "max_tokens" a request may ask for
  std::string chat_template;  // decoders: a template (or llama.cpp format name) instead of the model's
};

class Server {
 public:
  explicit Server(ServerOptions opts);  // loads the model (and the pinned adapters)
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  const std::string& name() const;  // the base's name in requests and /v1/models
  bool is_decoder() const;          // serves completions (else embeddings)
  int bind();   // binds host:port; returns the port. Throws peft::Error when it cannot.
  void run();   // serves until stop(); bind() first
  void stop();  // stops accepting, finishes the requests in flight, then returns run()

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft::serve
