// `peft bench serve`: requests/s and latency of `peft serve` (serve/server.h) on the real
// all-MiniLM-L6-v2 with 1, 10 and 100 LoRA adapters in rotation behind an LRU of 16, clients over
// real sockets in the same process; and, at the library level, one mixed batch of 8 adapters
// against 8 one-adapter batches. No other program serves per-request adapters for an encoder,
// so the comparisons are among our own configurations (issue 31's targets).
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "adapters/utilities.h"
#include "nn/transformers/text_model.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "serve/server.h"
#include "tools/bench_common.h"
#include "tools/cli.h"

namespace peft::cli::bench {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* kSentences[] = {
    "the act of moving something from one place to another",
    "a small domesticated carnivorous mammal with soft fur",
    "an instrument for measuring the passage of time",
    "a building where works of art are displayed",
    "the quality of being honest and having strong moral principles",
    "a long narrow flag used as a decoration or signal",
    "to make a written record of something",
    "a steep high face of rock at the edge of the sea",
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5));
  return v[i];
}

struct LoadResult {
  double seconds = 0, rps = 0, p50 = 0, p95 = 0;
  int errors = 0;
};

// `requests` requests from `clients` threads, adapter (i mod k) for the i-th request overall.
LoadResult load(int port, const std::string& base, int k, int requests, int clients) {
  std::atomic<int> next{0}, errors{0};
  std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
  const double t0 = now_s();
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c)
    ts.emplace_back([&, c] {
      httplib::Client cl("127.0.0.1", port);
      cl.set_keep_alive(true);
      cl.set_tcp_nodelay(true);
      cl.set_read_timeout(120, 0);
      for (int i; (i = next++) < requests;) {
        const json body = {{"model", base + std::string(":a") + std::to_string(i % k)},
                           {"input", kSentences[size_t(i) % (sizeof kSentences / sizeof *kSentences)]}};
        const double s = now_s();
        auto r = cl.Post("/v1/embeddings", body.dump(), "application/json");
        if (!r || r->status != 200) ++errors;
        lat[size_t(c)].push_back(now_s() - s);
      }
    });
  for (auto& t : ts) t.join();
  LoadResult out;
  out.seconds = now_s() - t0;
  std::vector<double> all;
  for (const auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  out.rps = double(requests) / out.seconds;
  out.p50 = percentile(all, 0.5);
  out.p95 = percentile(all, 0.95);
  out.errors = errors;
  return out;
}

std::string default_model_dir() {
  const char* c = std::getenv("PEFT_CACHE");
  const char* h = std::getenv("HOME");
  const fs::path cache = c && *c ? fs::path(c) : fs::path(h ? h : "/tmp") / ".cache" / "peft";
  return (cache / "all-MiniLM-L6-v2").string();
}

}  // namespace

int bench_serve(const std::vector<std::string>& args, Report& rep) {
  Options o;
  std::string model_dir = default_model_dir();
  int requests = 400, clients = 8, cache = 16;
  std::vector<std::string> rest = parse_common(args, o);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--model-dir" && i + 1 < rest.size()) model_dir = rest[++i];
    else if (rest[i] == "--requests" && i + 1 < rest.size()) requests = parse_int(rest[i], rest[i + 1], 10), ++i;
    else if (rest[i] == "--clients" && i + 1 < rest.size()) clients = parse_int(rest[i], rest[i + 1], 1), ++i;
    else if (rest[i] == "--cache" && i + 1 < rest.size()) cache = parse_int(rest[i], rest[i + 1], 1), ++i;
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (o.help) {
    std::printf(
        "usage: peft bench serve [--model-dir DIR] [--requests N] [--clients C] [--cache N] [--threads N] [--markdown]\n"
        "  `peft serve` in this process on the real all-MiniLM-L6-v2 (default ~/.cache/peft/all-MiniLM-L6-v2,\n"
        "  scripts/fetch_minilm.sh) with 100 LoRA adapters (r=8 on query, value; random B) written to a\n"
        "  scratch folder. Rows: N requests (default 400) of one sentence from C client threads (default 8,\n"
        "  keep-alive connections) with 1, 10 and 100 adapters in rotation, an LRU of --cache (default 16)\n"
        "  loaded at once, batch window 5 ms: requests/s, p50 and p95 latency, adapter loads. Then, without\n"
        "  HTTP: one mixed batch of 8 sentences through 8 adapters against 8 one-adapter batches (median of\n"
        "  --reps x --rounds).\n");
    return 0;
  }
  if (!fs::exists(fs::path(model_dir) / "config.json"))
    fail("bench serve: ", model_dir, " holds no config.json (fetch the model: bash scripts/fetch_minilm.sh)");
  ScratchDir scratch;
  const fs::path adir = scratch.path / "adapters";
  {
    std::fprintf(stderr, "bench serve: writing 100 adapters\n");
    for (int i = 0; i < 100; ++i) {
      nn::TextModel tm = nn::TextModel::load(model_dir);
      manual_seed(uint64_t(1000 + i));
      LoraConfig cfg;
      cfg.r = 8;
      cfg.lora_alpha = 16;
      cfg.target_modules = TargetModules::list({"query", "value"});
      cfg.init_lora_weights = false;
      inject_adapter_in_model(cfg, *tm.model, "default");
      save_pretrained(*tm.model, (adir / (std::string("a") + std::to_string(i))).string());
    }
  }
  struct Line {
    std::string what;
    LoadResult r;
    int64_t loads = 0;
  };
  std::vector<Line> lines;
  for (int k : {1, 10, 100}) {
    serve::ServerOptions so;
    so.model = model_dir;
    so.adapter_dir = adir.string();
    so.port = 0;
    so.max_loaded_adapters = size_t(cache);
    so.served_name = "minilm";
    serve::Server server(so);
    const int port = server.bind();
    std::thread t([&] { server.run(); });
    (void)load(port, "minilm", std::min(k, cache), std::min(requests, 32), clients);  // warm-up
    Line l;
    l.what = std::to_string(k) + (k == 1 ? " adapter" : " adapters") + " in rotation";
    l.r = load(port, "minilm", k, requests, clients);
    httplib::Client cl("127.0.0.1", port);
    if (auto m = cl.Get("/metrics")) {
      const size_t p = m->body.find("\npeft_adapter_loads_total ");
      if (p != std::string::npos) l.loads = std::atoll(m->body.c_str() + p + 26);
    }
    server.stop();
    t.join();
    std::fprintf(stderr, "bench serve: %s: %.1f req/s, p50 %.1f ms, p95 %.1f ms, %lld loads, %d errors\n",
                 l.what.c_str(), l.r.rps, l.r.p50 * 1e3, l.r.p95 * 1e3, (long long)l.loads, l.r.errors);
    if (l.r.errors) fail("bench serve: ", l.r.errors, " requests failed");
    lines.push_back(l);
  }

  // one mixed batch of 8 adapters against 8 one-adapter batches, on the library
  nn::TextModel tm = nn::TextModel::load(model_dir);
  std::vector<std::string> names, texts;
  for (int i = 0; i < 8; ++i) {
    names.push_back(std::string("a") + std::to_string(i));
    texts.push_back(kSentences[i]);
    ScopedWarningHandler quiet;
    load_adapter(*tm.model, (adir / names.back()).string(), names.back(), true);
  }
  tm.model->eval();
  Case mixed, separate;
  mixed.run = [&] {
    NoGradGuard ng;
    nn::ModelInputs in = tm.batch(texts);
    (void)forward_mixed_batch(*tm.model, names, [&] { return tm.embed(in); });
  };
  separate.run = [&] {
    NoGradGuard ng;
    for (int i = 0; i < 8; ++i) {
      set_adapter(*tm.model, names[size_t(i)], true);
      (void)tm.embed({texts[size_t(i)]});
    }
  };
  double load_delete = 0;  // what one LRU miss costs
  {
    const double t0 = now_s();
    for (int i = 8; i < 48; ++i) {
      ScopedWarningHandler quiet;
      const std::string n = std::string("a") + std::to_string(i);
      load_adapter(*tm.model, (adir / n).string(), n, true);
      delete_adapter(*tm.model, n);
    }
    load_delete = (now_s() - t0) / 40;
  }
  Case base;  // the floor: the same batch with every adapter off
  base.run = [&] {
    NoGradGuard ng;
    DisableAdapterGuard off(*tm.model);
    (void)tm.embed(texts);
  };
  Sampler sm(mixed, o), ss(separate, o), sb(base, o);
  std::vector<double> a, b, c;
  for (int r = 0; r < o.rounds; ++r) sm.round(a), ss.round(b), sb.round(c);
  const double tm_mixed = median(a), tm_sep = median(b), tm_base = median(c);

  const double base_rps = lines[0].r.rps;
  std::printf("Model: %s. Machine: %s. %d requests of one sentence from %d clients per row, LRU of %d; one adapter "
              "load + eviction %s.\n",
              model_dir.c_str(), machine_description().c_str(), requests, clients, cache, fmt_time(load_delete).c_str());
  if (o.markdown) {
    std::printf("| case | requests/s | p50 | p95 | vs 1 adapter | adapter loads |\n|---|---:|---:|---:|---:|---:|\n");
    for (const Line& l : lines)
      std::printf("| %s | %.1f | %s | %s | %.2f | %lld |\n", l.what.c_str(), l.r.rps, fmt_time(l.r.p50).c_str(),
                  fmt_time(l.r.p95).c_str(), l.r.rps / base_rps, (long long)l.loads);
    std::printf("| 8 adapters, one mixed batch of 8 sentences | %s | | | %.2fx faster than 8 one-adapter batches (%s); "
                "the base model's batch of 8: %s | |\n",
                fmt_time(tm_mixed).c_str(), tm_sep / tm_mixed, fmt_time(tm_sep).c_str(), fmt_time(tm_base).c_str());
  } else {
    std::printf("%-44s %11s %10s %10s %13s %8s\n", "case", "requests/s", "p50", "p95", "vs 1 adapter", "loads");
    for (const Line& l : lines)
      std::printf("%-44s %11.1f %10s %10s %13.2f %8lld\n", l.what.c_str(), l.r.rps, fmt_time(l.r.p50).c_str(),
                  fmt_time(l.r.p95).c_str(), l.r.rps / base_rps, (long long)l.loads);
    std::printf("8 adapters: one mixed batch of 8 sentences %s, 8 one-adapter batches %s: %.2fx (the base model's "
                "batch of 8: %s)\n",
                fmt_time(tm_mixed).c_str(), fmt_time(tm_sep).c_str(), tm_sep / tm_mixed, fmt_time(tm_base).c_str());
  }
  for (const Line& l : lines) rep.rows.push_back({"serve", l.what, 1.0 / l.r.rps, std::nullopt, ""});
  rep.rows.push_back({"serve", "mixed batch of 8 adapters", tm_mixed, std::nullopt, ""});
  return 0;
}

}  // namespace peft::cli::bench
