// `peft bench transformer`: the real all-MiniLM-L6-v2 against what an application would use
// instead — transformers (sdpa) on PyTorch, ONNX Runtime on the same model exported with
// torch.onnx.export(dynamo=True), PEFT for the LoRA train step, sentence-transformers' encode for
// throughput — in one run, rounds alternating the sides (tools/bench/transformer.py is theirs).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "adapters/peft.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "nn/transformers/pretrained.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/bench_common.h"
#include "tools/args.h"
#include "tools/cli.h"
#include "nn/transformers/text_model.h"
#include "tools/wordnet.h"

namespace peft::cli::bench {

namespace {

namespace fs = std::filesystem;

const char* kEmbedText = "the quick brown fox jumps over the lazy dog near the old river bank";  // 16 tokens

// Fixed pseudo-random token ids [B, T]: [CLS] ... [SEP], the words from the vocabulary's
// ordinary range (speed does not depend on them; both sides get the same).
std::vector<std::vector<int64_t>> fixed_ids(int64_t B, int64_t T, uint64_t seed) {
  Generator g(seed);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(B), std::vector<int64_t>(static_cast<size_t>(T)));
  for (auto& r : rows) {
    for (auto& v : r) v = 1000 + int64_t(g.next_double() * 28000);
    r.front() = 101, r.back() = 102;
  }
  return rows;
}

Tensor ids_tensor(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return from_vector(flat, {int64_t(rows.size()), int64_t(rows[0].size())});
}

nn::ModelInputs full_inputs(const Tensor& ids) {
  nn::ModelInputs in;
  in.input_ids = ids;
  in.attention_mask = ones(ids.shape(), DType::int64);
  in.token_type_ids = zeros(ids.shape(), DType::int64);
  return in;
}

double max_abs_diff(const Tensor& ours, const nlohmann::json& theirs) {
  std::vector<float> a = ours.contiguous().to_vector<float>();
  if (theirs.size() != a.size()) fail("bench transformer: ", a.size(), " values here, ", theirs.size(), " there");
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - theirs[i].get<double>()));
  return m;
}

std::string mib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.0f MiB", bytes / (1 << 20));
  return b;
}

// One row of the table: seconds per call (median) of each side, peak RSS of each process.
struct TRow {
  std::string what;
  double ours = 0;
  std::optional<double> torch, ort;
  int64_t rss_ours = -1, rss_torch = -1;
  std::string note;
};

// ours, then every request of `theirs`, for o.rounds rounds; appends each side's samples
struct Side {
  PyWorker* worker = nullptr;  // null: not measured
  nlohmann::json request;
  std::vector<double> samples;
  int64_t peak = -1;
};
double alternate(Case ours, std::vector<Side*> theirs, const Options& o, int64_t* our_peak, const char* label) {
  Sampler s(std::move(ours), o);
  std::vector<double> a;
  reset_peak_rss();
  for (int r = 0; r < o.rounds; ++r) {
    std::fprintf(stderr, "\rbench transformer: %s, round %d/%d\033[K", label, r + 1, o.rounds);
    s.round(a);
    for (Side* t : theirs)
      if (t->worker) {
        t->worker->round(t->request, o, r == 0, t->samples);
        t->peak = std::max(t->peak, t->worker->last_peak_rss());
      }
  }
  std::fprintf(stderr, "\r\033[K");
  if (our_peak) *our_peak = peak_rss();
  return median(a);
}

std::string ratio(double ours, const std::optional<double>& theirs) {
  if (!theirs || *theirs <= 0) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", ours / *theirs);
  return b;
}

void print_table(const std::vector<TRow>& rows, bool markdown) {
  auto t = [](const std::optional<double>& s) { return s ? fmt_time(*s) : std::string("-"); };
  auto rss = [](const TRow& r) {
    if (r.rss_ours < 0) return std::string("-");
    return mib(double(r.rss_ours)) + " / " + (r.rss_torch >= 0 ? mib(double(r.rss_torch)) : std::string("-"));
  };
  if (markdown) {
    std::printf("| case | peft.cpp | PyTorch | ONNX Runtime | ours / PyTorch | ours / ONNX Runtime | peak RSS (ours / Python) | notes |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (const TRow& r : rows)
      std::printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.what.c_str(), fmt_time(r.ours).c_str(),
                  t(r.torch).c_str(), t(r.ort).c_str(), ratio(r.ours, r.torch).c_str(), ratio(r.ours, r.ort).c_str(),
                  rss(r).c_str(), r.note.c_str());
    return;
  }
  std::printf("%-30s %10s %10s %12s %9s %9s %22s  %s\n", "case", "peft.cpp", "PyTorch", "ONNX Runtime", "/PyTorch",
              "/ORT", "peak RSS (ours/Py)", "notes");
  for (const TRow& r : rows)
    std::printf("%-30s %10s %10s %12s %9s %9s %22s  %s\n", r.what.c_str(), fmt_time(r.ours).c_str(), t(r.torch).c_str(),
                t(r.ort).c_str(), ratio(r.ours, r.torch).c_str(), ratio(r.ours, r.ort).c_str(), rss(r).c_str(),
                r.note.c_str());
}

std::string default_model_dir() {
  const char* c = std::getenv("PEFT_CACHE");
  const char* h = std::getenv("HOME");
  const fs::path cache = c && *c ? fs::path(c) : fs::path(h ? h : "/tmp") / ".cache" / "peft";
  return (cache / "all-MiniLM-L6-v2").string();
}

const char* kHelp =
    "usage: peft bench transformer [--model-dir DIR] [--wordnet DIR] [--sentences N] [--cases LIST]\n"
    "                              [--python PATH] [--markdown] [--threads N] [--rounds N] [--reps N]\n"
    "  The real all-MiniLM-L6-v2 (DIR, default ~/.cache/peft/all-MiniLM-L6-v2: scripts/fetch_minilm.sh)\n"
    "  against transformers (sdpa) on PyTorch and ONNX Runtime (the model exported with\n"
    "  torch.onnx.export(dynamo=True); its outputs are checked against PyTorch's, and ours against\n"
    "  both, before anything is timed). Rounds alternate the sides; medians; peak RSS of each process.\n"
    "  Cases (--cases, comma-separated; default all):\n"
    "    forward     `minilm forward 32x64`: batch 32 x 64 tokens, no grad, last hidden state\n"
    "    embed       `minilm embed 1x16`: one 16-token sentence, text -> tokens -> model -> mean\n"
    "                pooling -> L2 normalisation (the latency an application sees per query)\n"
    "    train       `minilm lora train step 64x24`: LoRA r=8 on query, key, value, dense, train mode\n"
    "                (dropout 0.1), 64 queries and 64 docs of 24 tokens, mean pooling, in-batch\n"
    "                contrastive cross-entropy on 20 * cosine, AdamW; vs transformers + PEFT\n"
    "    load        `minilm load`: load_pretrained of the folder to the first forward of one 16-token\n"
    "                sentence, time and resident-memory growth, vs AutoModel.from_pretrained\n"
    "    throughput  `minilm embed throughput`: sentences/s over N WordNet glosses (--sentences,\n"
    "                default 10000, from --wordnet, default /usr/share/wordnet: Debian's\n"
    "                wordnet-base), batches of 64 in length order, vs sentence-transformers' encode\n"
    "                (batch_size 64)\n"
    "  Ratio columns: ours / theirs (below 1: ours faster).\n%s";

}  // namespace

int bench_transformer(const std::vector<std::string>& args, Report& rep) {
  Options o;
  o.reps = 3;
  o.rounds = 5;
  o.warmup = 2;
  std::string model_dir = default_model_dir(), wordnet_dir = "/usr/share/wordnet";
  int sentences = 10000;
  std::vector<std::string> cases = {"forward", "embed", "train", "load", "throughput"};
  bool rounds_given = false, reps_given = false;
  for (const auto& a : args) {
    rounds_given |= a == "--rounds" || a.rfind("--rounds=", 0) == 0;
    reps_given |= a == "--reps" || a.rfind("--reps=", 0) == 0;
  }
  std::vector<std::string> rest = parse_common(args, o);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--model-dir" && i + 1 < rest.size()) model_dir = rest[++i];
    else if (rest[i] == "--wordnet" && i + 1 < rest.size()) wordnet_dir = rest[++i];
    else if (rest[i] == "--sentences" && i + 1 < rest.size()) sentences = parse_int(rest[i], rest[i + 1], 64), ++i;
    else if (rest[i] == "--cases" && i + 1 < rest.size()) {
      cases = split_commas(rest[++i]);
      for (const auto& c : cases)
        if (c != "forward" && c != "embed" && c != "train" && c != "load" && c != "throughput")
          throw UsageError{"--cases: unknown case '" + c + "' (forward, embed, train, load, throughput)"};
    } else throw UsageError{"unknown option " + rest[i]};
  }
  if (o.help) {
    std::printf(kHelp, kCommonHelp);
    return 0;
  }
  auto want = [&](const char* c) { return std::find(cases.begin(), cases.end(), c) != cases.end(); };
  if (!fs::exists(fs::path(model_dir) / "config.json"))
    fail("bench transformer: ", model_dir, " holds no config.json (fetch the model: bash scripts/fetch_minilm.sh)");
  model_dir = fs::absolute(model_dir).string();
  auto py = start_worker("transformer", o, rep);
  ScratchDir scratch;
  const double t0 = now_s();
  std::vector<TRow> rows;
  auto side = [&](PyWorker* worker, const char* name, nlohmann::json req) {
    req["side"] = name;
    req["model"] = model_dir;
    req["scratch"] = scratch.path.string();
    Side s;
    s.worker = worker;
    s.request = std::move(req);
    return s;
  };
  std::string ort_diff;

  // the ONNX Runtime and sentence-transformers sides need their packages in the worker's Python
  auto has = [&](const char* pkg) { return py && py->hello().value(pkg, std::string("absent")) != "absent"; };
  const bool have_ort = has("onnxruntime") && has("onnxscript"), have_st = has("sentence_transformers");
  if (py && !have_ort)
    std::fprintf(stderr, "bench transformer: ONNX Runtime not measured (pip install onnxruntime onnxscript)\n");
  if (py && !have_st)
    std::fprintf(stderr, "bench transformer: sentence-transformers not measured (pip install sentence-transformers)\n");
  // ONNX Runtime in a process of its own: it pins its threads to cores and spins them between
  // runs, which slowed PyTorch's forward in the same process by 7%
  std::unique_ptr<PyWorker> py_ort;
  if (have_ort && (want("forward") || want("embed"))) {
    std::string why;
    py_ort = PyWorker::start("transformer", o, why);
    if (!py_ort) std::fprintf(stderr, "bench transformer: ONNX Runtime not measured: %s\n", why.c_str());
  }
  PyWorker* const torch_w = py.get();
  PyWorker* const ort_w = py_ort.get();
  PyWorker* const st_w = have_st ? py.get() : nullptr;

  nn::TextModel tm = nn::TextModel::load(model_dir);
  tm.model->eval();

  if (want("forward")) {
    const auto rows_ids = fixed_ids(32, 64, 1);
    const nn::ModelInputs in = full_inputs(ids_tensor(rows_ids));
    auto forward = [&] {
      NoGradGuard ng;
      return tm.model->forward(in);
    };
    Side torch = side(torch_w, "torch", {{"case", "forward"}, {"ids", rows_ids}});
    Side ort = side(ort_w, "ort", {{"case", "forward"}, {"ids", rows_ids}});
    {
      // the three must compute the same thing before any is timed
      const Tensor pooled = nn::mean_pooling(forward(), in.attention_mask);
      for (Side* s : {&torch, &ort}) {
        if (!s->worker) continue;
        nlohmann::json check = s->request;
        check["check"] = true;
        check["reps"] = 1, check["warmup"] = 0;
        const nlohmann::json notes = s->worker->call(check).at("notes");
        const double d = max_abs_diff(pooled, notes.at("pooled"));
        std::fprintf(stderr, "bench transformer: forward 32x64, mean-pooled rows: ours vs %s max |diff| %.2e\n",
                     s->request["side"].get<std::string>().c_str(), d);
        if (!(d < 1e-4)) fail("bench transformer: our forward differs from ", s->request["side"].get<std::string>(), "'s by ", d);
        if (s == &ort) {
          char b[64];
          std::snprintf(b, sizeof b, "export vs PyTorch %.1e", notes.value("export_max_abs_diff", -1.0));
          ort_diff = b;
        }
      }
    }
    Case c;
    c.run = [&] { (void)forward(); };
    TRow r;
    r.what = "minilm forward 32x64";
    r.ours = alternate(c, {&torch, &ort}, o, &r.rss_ours, "forward 32x64");
    if (torch_w) r.torch = median(torch.samples), r.rss_torch = torch.peak;
    if (ort_w) r.ort = median(ort.samples);
    r.note = "no grad" + (ort_diff.empty() ? std::string() : "; ONNX Runtime " + ort_diff);
    rows.push_back(r);
  }

  if (want("embed")) {
    Case c;
    Tensor e;
    c.run = [&] {
      NoGradGuard ng;
      e = tm.embed({kEmbedText}, "mean");
    };
    c.run();
    const int64_t tokens = tm.batch({kEmbedText}).input_ids.size(1);
    Side torch = side(torch_w, "torch", {{"case", "embed"}, {"text", kEmbedText}});
    Side ort = side(ort_w, "ort", {{"case", "embed"}, {"text", kEmbedText}});
    double worst = 0;
    for (Side* s : {&torch, &ort}) {
      if (!s->worker) continue;
      nlohmann::json check = s->request;
      check["reps"] = 1, check["warmup"] = 0;
      worst = std::max(worst, max_abs_diff(nn::l2_normalize(e), s->worker->call(check).at("notes").at("embedding")));
    }
    if (!(worst < 1e-5)) fail("bench transformer: our embedding differs from the others' by ", worst);
    TRow r;
    r.what = "minilm embed 1x" + std::to_string(tokens);
    r.ours = alternate(c, {&torch, &ort}, o, &r.rss_ours, "embed");
    if (torch_w) r.torch = median(torch.samples), r.rss_torch = torch.peak;
    if (ort_w) r.ort = median(ort.samples);
    char b[96];
    std::snprintf(b, sizeof b, "; embeddings within %.1e", worst);
    r.note = std::string("tokenize + forward + pool + normalise") + (torch_w ? b : "");
    rows.push_back(r);
  }

  if (want("train")) {
    Options ot = o;
    if (!reps_given) ot.reps = 2;
    ot.warmup = 1;
    auto m = nn::load_pretrained(model_dir);
    LoraConfig cfg;
    cfg.r = 8;
    cfg.lora_alpha = 16;
    cfg.lora_dropout = 0;
    cfg.target_modules = TargetModules::list({"query", "key", "value", "dense"});
    inject_adapter_in_model(cfg, *m, "default");
    m->train();
    nn::AdamWOptions ao;
    ao.lr = 1e-4;
    ao.weight_decay = 0.01;
    nn::NamedTensors trainable;
    for (auto& [n, p] : m->named_parameters())
      if (p.requires_grad()) trainable.emplace_back(n, p);
    nn::AdamW opt(trainable, ao);
    const auto q = fixed_ids(64, 24, 2), d = fixed_ids(64, 24, 3);
    const nn::ModelInputs iq = full_inputs(ids_tensor(q)), id = full_inputs(ids_tensor(d));
    const Tensor labels = arange(0, 64, 1, DType::int64);
    Case c;
    c.batch = false;
    c.run = [&] {
      Tensor eq = nn::l2_normalize(nn::mean_pooling(m->forward(iq), iq.attention_mask));
      Tensor ed = nn::l2_normalize(nn::mean_pooling(m->forward(id), id.attention_mask));
      Tensor loss = cross_entropy(mul(matmul(eq, ed.t()), 20.0), labels);
      loss.backward();
      opt.step();
      for (auto& [n, p] : trainable) p.zero_grad();
    };
    Side torch = side(torch_w, "torch", {{"case", "train"}, {"queries", q}, {"docs", d}});
    TRow r;
    r.what = "minilm lora train step 64x24";
    r.ours = alternate(c, {&torch}, ot, &r.rss_ours, "lora train step");
    if (py) r.torch = median(torch.samples), r.rss_torch = torch.peak;
    r.note = "r=8 on query, key, value, dense; train mode: hidden dropout 0.1 both, attention-probability dropout transformers only";
    rows.push_back(r);
  }

  if (want("load")) {
    Options ol = o;
    ol.warmup = 1;
    const nn::ModelInputs in = tm.batch({kEmbedText});
    std::vector<double> growth;
    int64_t before = 0;
    std::shared_ptr<nn::PreTrainedModel> m;
    Case c;
    c.batch = false;
    c.prepare = [&] {
      trim_cpu_cache(true);
      reset_peak_rss();
      before = current_rss();
    };
    c.run = [&] {
      m = nn::load_pretrained(model_dir);
      m->eval();
      NoGradGuard ng;
      (void)m->forward(in);
    };
    c.after = [&] {
      growth.push_back(double(peak_rss() - before));
      m.reset();
      trim_cpu_cache(true);
    };
    Side torch = side(torch_w, "torch", {{"case", "load"}, {"text", kEmbedText}});
    TRow r;
    r.what = "minilm load";
    r.ours = alternate(c, {&torch}, ol, nullptr, "load");
    if (py) r.torch = median(torch.samples);
    uint64_t file_bytes = 0;
    for (const auto& e : fs::directory_iterator(model_dir))
      if (e.path().extension() == ".safetensors") file_bytes += e.file_size();
    r.note = "RSS growth " + mib(median(growth)) + " ours / " +
             (py && py->last_notes().contains("rss_growth") ? mib(py->last_notes()["rss_growth"].get<double>()) : "-") +
             " PyTorch (weights file " + mib(double(file_bytes)) + ")";
    rows.push_back(r);
  }

  if (want("throughput")) {
    Options ot = o;
    if (!rounds_given) ot.rounds = 2;
    if (!reps_given) ot.reps = 1;
    ot.warmup = 0;
    std::vector<TextPair> all = read_wordnet_pairs(wordnet_dir), train, held;
    if (size_t(sentences) >= all.size()) fail("bench transformer: --sentences ", sentences, " but WordNet has ", all.size(), " glosses");
    split_pairs(all, size_t(sentences), 7, train, held);  // a seeded sample of glosses
    std::vector<std::string> texts;
    std::string file_text;
    for (const TextPair& p : held) texts.push_back(p.query), file_text += p.query + '\n';
    const std::string texts_file = (scratch.path / "glosses.txt").string();
    std::ofstream(texts_file, std::ios::binary) << file_text;
    // length order (longest first, as sentence-transformers), batches of 64
    std::vector<size_t> order(texts.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return texts[a].size() > texts[b].size(); });
    Tensor out;
    Case c;
    c.batch = false;
    c.run = [&] {
      NoGradGuard ng;
      std::vector<Tensor> parts;
      std::vector<int64_t> where(texts.size());
      for (size_t i = 0; i < order.size(); i += 64) {
        std::vector<std::string> chunk;
        for (size_t j = i; j < std::min(order.size(), i + 64); ++j) chunk.push_back(texts[order[j]]), where[order[j]] = int64_t(j);
        parts.push_back(tm.embed(chunk));
      }
      out = index_select(cat(parts, 0), 0, from_vector(where, {int64_t(where.size())}));
    };
    Side st = side(st_w, "st", {{"case", "throughput"}, {"texts", texts_file}});
    TRow r;
    r.what = "minilm embed throughput";
    r.ours = alternate(c, {&st}, ot, &r.rss_ours, "embed throughput");
    if (have_st) r.torch = median(st.samples), r.rss_torch = st.peak;
    char b[160];
    std::snprintf(b, sizeof b, "%d glosses, batch 64: %.0f sentences/s ours, %s sentence-transformers (PyTorch column)",
                  sentences, double(sentences) / r.ours,
                  r.torch ? std::to_string(int(std::lround(double(sentences) / *r.torch))).c_str() : "-");
    r.note = b;
    rows.push_back(r);
  }

  std::printf("Model: %s. Machine: %s (each side). %s. Total %.0f s.\n", model_dir.c_str(),
              machine_description().c_str(),
              py ? (rep.torch_versions + (ort_w ? ", ONNX Runtime " + ort_w->hello().value("onnxruntime", std::string("?")) : "") +
                    (st_w ? ", sentence-transformers " + st_w->hello().value("sentence_transformers", std::string("?")) : ""))
                       .c_str()
                 : ("PyTorch not measured: " + rep.no_python_why).c_str(),
              now_s() - t0);
  print_table(rows, o.markdown);
  for (const TRow& r : rows) {
    Row row{"transformer", r.what, r.ours, r.torch, r.note};
    row.peak_rss = r.rss_ours;
    if (r.rss_torch >= 0) row.peak_rss_theirs = r.rss_torch;
    rep.rows.push_back(row);
  }
  return 0;
}

}  // namespace peft::cli::bench
