// `peft serve`: the command over peft::serve::Server (serve/server.h); SIGTERM or SIGINT stops
// accepting, answers the requests in flight and exits 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <thread>

#include "runtime/tensor.h"
#include "serve/server.h"
#include "tools/args.h"
#include "tools/cli.h"

namespace peft::cli {

namespace {

const char* kServeHelp = R"(usage: peft serve --model DIR|FILE.gguf [--adapter-dir DIR] [--max-loaded-adapters N] [--pin NAME]...
                  [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--threads N]
                  [--max-batch B] [--batch-window-ms W] [--served-name NAME]
                  [--max-tokens N] [--chat-template NAME]

An OpenAI-compatible HTTP endpoint over one model — a sentence-embedding encoder (a Hugging Face
folder with tokenizer.json, e.g. all-MiniLM-L6-v2) or a decoder (a GGUF file or a Llama / Qwen2 /
GPT-2 folder) — and the PEFT adapters under --adapter-dir, one per request: "model": "NAME" is
the base, "NAME:ADAPTER" the folder DIR/ADAPTER.

  POST /v1/embeddings       encoders: {"model", "input": text or [texts], "encoding_format"}
  POST /v1/completions      decoders: {"model", "prompt", "max_tokens", "temperature" (0 = greedy),
                            "top_p", "seed", "stop", "stream": true for server-sent events}
  POST /v1/chat/completions decoders: {"model", "messages", ...}: the model's chat template
  GET  /v1/models           the base and every adapter known
  POST /v1/adapters         {"name", "path"}: a folder inside --adapter-dir, under that name
  DELETE /v1/adapters/NAME  unload it (a folder of --adapter-dir comes back when named again)
  GET  /health, GET /metrics (Prometheus text)

Embedding requests arriving within W ms (default 5) run as one forward of up to B texts
(default 64), each row through its own adapter (PEFT's mixed batch); generations run one at a
time in arrival order. Adapters load on first use, at most
N at once (default 16; least recently used evicted; --pin keeps one loaded). A batch whose
rows all use one adapter computes exactly what `peft embed --adapter` computes.

options:
  --host H            address to bind (default 127.0.0.1: this machine only)
  --port P            port (default 8080; 0 picks a free one, printed at start)
  --api-key KEY       require "Authorization: Bearer KEY" on every request (else 401)
  --threads N         CPU threads for the model (default: all cores)
  --max-inputs N      texts per request (default 2048); --max-body-bytes N (default 8 MiB)
  --served-name NAME  the base's name in "model" (default: the folder's name)
  --max-tokens N      decoders: the most "max_tokens" a request may ask for (default 4096)
  --chat-template T   decoders: a chat template, or a llama.cpp format name (chatml, llama3, ...),
                      instead of the model's own
)";

int run_serve(const std::vector<std::string>& argv) {
  Args a(argv,
         {"model", "adapter-dir", "max-loaded-adapters", "host", "port", "api-key", "threads", "max-batch",
          "batch-window-ms", "served-name", "max-inputs", "max-body-bytes", "max-tokens", "chat-template"},
         {}, {"pin"});
  if (a.help) {
    std::printf("%s", kServeHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument " + a.positional[0]};
  serve::ServerOptions o;
  o.model = a.required("model");
  o.adapter_dir = a.get("adapter-dir", "");
  o.pinned = a.all("pin");
  const int64_t loaded = a.get_int("max-loaded-adapters", 16);
  if (loaded < 1) throw UsageError{"--max-loaded-adapters must be at least 1"};
  o.max_loaded_adapters = size_t(loaded);
  o.host = a.get("host", "127.0.0.1");
  const int64_t port = a.get_int("port", 8080);
  if (port < 0 || port > 65535) throw UsageError{"--port must be 0-65535"};
  o.port = int(port);
  o.api_key = a.get("api-key", "");
  o.max_batch = a.get_int("max-batch", 64);
  if (o.max_batch < 1) throw UsageError{"--max-batch must be at least 1"};
  const int64_t window = a.get_int("batch-window-ms", 5);
  if (window < 0 || window > 10000) throw UsageError{"--batch-window-ms must be 0-10000"};
  o.batch_window_ms = int(window);
  o.served_name = a.get("served-name", "");
  o.max_tokens = a.get_int("max-tokens", 4096);
  if (o.max_tokens < 1) throw UsageError{"--max-tokens must be at least 1"};
  o.chat_template = a.get("chat-template", "");
  o.max_inputs = a.get_int("max-inputs", 2048);
  if (o.max_inputs < 1) throw UsageError{"--max-inputs must be at least 1"};
  const int64_t body = a.get_int("max-body-bytes", int64_t(8) << 20);
  if (body < 1024) throw UsageError{"--max-body-bytes must be at least 1024"};
  o.max_body_bytes = size_t(body);
  if (a.has("threads")) {
    const int64_t t = a.get_int("threads", 1);
    if (t < 1) throw UsageError{"--threads must be at least 1"};
    set_num_threads(int(t));
  }

  // SIGTERM / SIGINT go to one thread that asks the server to stop: blocked here, before any
  // other thread exists, so every thread inherits the mask
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  serve::Server server(o);
  const int bound = server.bind();
  std::printf("peft serve: %s on http://%s:%d (%s, \"model\": \"%s\" or \"%s:ADAPTER\")%s\n", o.model.c_str(),
              o.host.c_str(), bound,
              server.is_decoder() ? "POST /v1/completions, /v1/chat/completions" : "POST /v1/embeddings",
              server.name().c_str(), server.name().c_str(), o.api_key.empty() ? "" : ", API key required");
  std::fflush(stdout);
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    std::fprintf(stderr, "peft serve: %s, finishing the requests in flight\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server.stop();
  });
  server.run();
  // run() returned: stopped by a signal (the waiter is done), or the listener failed
  if (waiter.joinable()) {
    pthread_kill(waiter.native_handle(), SIGTERM);  // a no-op wait if it already returned
    waiter.join();
  }
  std::printf("peft serve: stopped\n");
  return 0;
}

Registrar reg_serve({"serve", "OpenAI-compatible HTTP API (embeddings, completions) over a model and many adapters", run_serve});

}  // namespace

}  // namespace peft::cli
