// The definition-search job on a real pretrained encoder: `peft wordnet-pairs` builds
// (gloss -> lemma) pairs from WordNet and splits them; `peft finetune-embed` LoRA-tunes a
// sentence-transformers model on (query, doc) pairs with in-batch negatives and reports
// retrieval recall on the held-out pairs before and after.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/atomic_file.h"
#include "nn/optim.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/cli.h"
#include "tools/plot.h"
#include "nn/transformers/text_model.h"
#include "train/progress.h"
#include "train/sampler.h"
#include "train/trainer.h"
#include "tools/wordnet.h"

namespace peft::cli {

namespace fs = std::filesystem;

namespace {

void write_file_atomic(const fs::path& path, const std::string& text) { io::write_file_atomic(path.string(), text); }

// save_pretrained into DIR.tmp, then DIR.tmp replaces DIR: a crash leaves the old DIR.
void save_adapter_atomic(const nn::Module& model, const fs::path& dir) {
  train::replace_dir_atomic(dir.string(), [&](const std::string& tmp) { save_pretrained(model, tmp); });
}

// Normalised embeddings of `texts`, `batch` at a time, without autograd.
Tensor embed_all(nn::TextModel& tm, const std::vector<std::string>& texts, size_t max_len, size_t batch,
                 const char* what) {
  NoGradGuard ng;
  std::vector<Tensor> parts;
  train::Progress bar(what, int64_t(texts.size()));
  for (size_t i = 0; i < texts.size(); i += batch) {
    std::vector<std::string> chunk(texts.begin() + ptrdiff_t(i), texts.begin() + ptrdiff_t(std::min(texts.size(), i + batch)));
    nn::ModelInputs in = tm.batch(chunk, max_len);
    in.skip_padding = true;
    parts.push_back(nn::l2_normalize(nn::mean_pooling(tm.model->forward(in), in.attention_mask)));
    bar.update(int64_t(i + chunk.size()), "texts");
  }
  return cat(parts, 0);
}

struct Retrieval {
  double recall_at_1 = 0, recall_at_10 = 0;
  std::vector<std::vector<size_t>> top3;  // for the first few queries
};

// Each query against every held-out doc: a hit when a doc with the query's own text is in
// the top k (duplicate lemma texts are the same answer).
Retrieval evaluate(nn::TextModel& tm, const std::vector<TextPair>& held, size_t max_q, size_t max_d,
                   size_t examples) {
  const bool was_training = tm.model->is_training();
  tm.model->eval();
  std::vector<std::string> qs, ds;
  for (const auto& p : held) qs.push_back(p.query), ds.push_back(p.doc);
  Tensor eq = embed_all(tm, qs, max_q, 128, "embed queries");
  Tensor ed = embed_all(tm, ds, max_d, 256, "embed docs");
  NoGradGuard ng;
  const Tensor scores = matmul(eq, ed.t()).contiguous();  // [N, N]
  const int64_t N = scores.size(0);
  const std::vector<float> s = scores.to_vector<float>();
  Retrieval r;
  int64_t hit1 = 0, hit10 = 0;
  std::vector<size_t> idx(static_cast<size_t>(N));
  for (int64_t q = 0; q < N; ++q) {
    const float* row = s.data() + q * N;
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + std::min<int64_t>(10, N), idx.end(),
                      [&](size_t a, size_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    for (int64_t k = 0; k < std::min<int64_t>(10, N); ++k)
      if (held[idx[size_t(k)]].doc == held[size_t(q)].doc) {
        if (k == 0) ++hit1;
        ++hit10;
        break;
      }
    if (size_t(q) < examples) r.top3.emplace_back(idx.begin(), idx.begin() + std::min<int64_t>(3, N));
  }
  r.recall_at_1 = double(hit1) / double(N);
  r.recall_at_10 = double(hit10) / double(N);
  if (was_training) tm.model->train();
  return r;
}

const char* kPairsHelp = R"(usage: peft wordnet-pairs [--wordnet DIR] --out DIR [--heldout N] [--seed S]

Builds (gloss -> lemma) pairs from WordNet's noun, verb and adjective synsets (Debian's
wordnet-base: DIR defaults to /usr/share/wordnet): one pair per synset, the gloss's first
clause (up to the first ';') as the query and the synset's first lemma as the doc, identical
pairs once. A seeded shuffle holds out N pairs (default 2000, seed 0). Writes DIR/train.tsv
and DIR/heldout.tsv (id, query, doc).
)";

int run_wordnet_pairs(const std::vector<std::string>& argv) {
  Args a(argv, {"wordnet", "out", "heldout", "seed"});
  if (a.help) {
    std::printf("%s", kPairsHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  const std::string out = a.required("out");
  const int64_t heldout = a.get_int("heldout", 2000);
  if (heldout <= 0) throw UsageError{"--heldout must be positive"};
  std::vector<TextPair> all = read_wordnet_pairs(a.get("wordnet", "/usr/share/wordnet")), train, held;
  split_pairs(all, size_t(heldout), uint64_t(a.get_int("seed", 0)), train, held);
  fs::create_directories(out);
  write_pairs_tsv(out + "/train.tsv", train);
  write_pairs_tsv(out + "/heldout.tsv", held);
  std::printf("wordnet-pairs: %zu pairs: %zu train, %zu held out -> %s/{train,heldout}.tsv\n", all.size(), train.size(),
              held.size(), out.c_str());
  return 0;
}

const char* kFinetuneHelp = R"(usage: peft finetune-embed --model DIR --train FILE --heldout FILE --out DIR [options]

LoRA-tunes a sentence-transformers encoder (a Hugging Face BERT folder with tokenizer.json)
on (query, doc) pairs with in-batch negatives: both sides are embedded (mean pooling, L2
normalised), scores = scale * cosine, cross-entropy against the matching pair
(MultipleNegativesRankingLoss). AdamW (weight decay 0.01) with linear warm-up and cosine
decay. Before and after, every held-out query retrieves among all held-out docs: recall@1
and recall@10 are printed with example queries. Writes DIR/adapter (a PEFT folder),
DIR/checkpoint (every --checkpoint-every steps, replaced atomically: the adapter, the
optimizer and generator state and the step), DIR/loss.svg and DIR/report.json. A non-finite
or diverging loss stops the run with a message; the last checkpoint stays, and --resume
continues from it with the bits of an uninterrupted run.

options:
  --steps N              optimizer steps (default 200)
  --batch N              pairs per step (default 64)
  --lr X                 peak learning rate (default 1e-3)
  --warmup N             warm-up steps (default 20)
  --r N, --alpha X       LoRA rank and alpha (default 8, 16)
  --dropout X            LoRA dropout (default 0)
  --target-modules LIST  comma-separated (default query,key,value,dense)
  --max-query N          query tokens (default 48)
  --max-doc N            doc tokens (default 16)
  --scale X              similarity scale (default 20)
  --seed S               batch order (default 0)
  --checkpoint-every N   (default 50; 0: none)
  --examples N           example queries to print (default 5)
  --resume               continue from DIR/checkpoint (same options and data)

Data parallel: `mpirun -n N peft finetune-embed ...` (a build with MPI) splits each batch of
--batch pairs into N equal shards (--batch must be a multiple of N). Each rank embeds its
shard, the embeddings are gathered, and every rank computes the loss of the whole batch, so
every doc of the batch is still a negative for every query; one allreduce per step averages
the gradients. The adapter equals one process's with the same --batch (up to float32
rounding). Every rank needs the same options and files (checked at the start); rank 0
evaluates, prints and writes DIR/. See docs/distributed.md.
)";

int run_finetune_embed(const std::vector<std::string>& argv) {
  Args a(argv, {"model", "train", "heldout", "out", "steps", "batch", "lr", "warmup", "r", "alpha", "dropout",
                "target-modules", "max-query", "max-doc", "scale", "seed", "checkpoint-every", "examples"},
         {"resume"});
  if (a.help) {
    std::printf("%s", kFinetuneHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  train::DataParallel dp("finetune-embed");
  const fs::path out = a.required("out");
  const int64_t steps = a.get_int("steps", 200), batch = a.get_int("batch", 64), warmup = a.get_int("warmup", 20);
  const int64_t max_q = a.get_int("max-query", 48), max_d = a.get_int("max-doc", 16);
  const int64_t ckpt_every = a.get_int("checkpoint-every", 50), n_examples = a.get_int("examples", 5);
  const double lr = a.get_double("lr", 1e-3), scale = a.get_double("scale", 20.0);
  if (steps <= 0 || batch < 2 || warmup < 0 || max_q < 2 || max_d < 2 || ckpt_every < 0 || n_examples < 0)
    throw UsageError{"--steps and --batch (>= 2) must be positive, --max-query/--max-doc >= 2"};
  if (!(lr > 0) || !(scale > 0)) throw UsageError{"--lr and --scale must be positive"};
  const train::DataParallel::Shard shard = dp.shard(batch);
  std::vector<TextPair> train_pairs = read_pairs_tsv(a.required("train")), held = read_pairs_tsv(a.required("heldout"));
  if (int64_t(train_pairs.size()) < batch) fail("finetune-embed: ", train_pairs.size(), " training pairs for batches of ", batch);
  nn::TextModel tm = nn::TextModel::load(a.required("model"));
  (void)tm.tok();
  std::vector<std::pair<std::string, std::string>> settings;
  for (const char* opt : {"steps", "batch", "lr", "warmup", "r", "alpha", "dropout", "target-modules", "max-query",
                          "max-doc", "scale", "seed"})
    settings.emplace_back(std::string("--") + opt, a.get(opt, ""));
  std::string train_text;
  for (const TextPair& p : train_pairs) train_text += p.query + '\t' + p.doc + '\n';
  settings.emplace_back("--train (the pairs)", train::DataParallel::digest(train_text));
  for (const char* file : {"config.json", "model.safetensors"})
    if (fs::exists(fs::path(a.get("model")) / file))
      settings.emplace_back(std::string("--model (") + file + ")",
                            train::DataParallel::file_digest((fs::path(a.get("model")) / file).string()));
  dp.require_same(settings);
  if (dp.is_main())
    std::printf("finetune-embed: %s (%s), %zu train pairs, %zu held out%s\n", a.get("model").c_str(),
                tm.model->type_name().c_str(), train_pairs.size(), held.size(),
                dp.size() > 1 ? (", " + std::to_string(dp.size()) + " ranks").c_str() : "");

  // rank 0 evaluates; the others wait for it in broadcast_parameters
  const Retrieval base = dp.is_main() ? evaluate(tm, held, size_t(max_q), size_t(max_d), 0) : Retrieval{};
  if (dp.is_main()) std::printf("base model: recall@1 %.3f  recall@10 %.3f\n", base.recall_at_1, base.recall_at_10);

  LoraConfig cfg;
  cfg.r = a.get_int("r", 8);
  cfg.lora_alpha = a.get_double("alpha", 16.0);
  cfg.lora_dropout = a.get_double("dropout", 0.0);
  cfg.target_modules = TargetModules::list(split_commas(a.get("target-modules", "query,key,value,dense")));
  inject_adapter_in_model(cfg, *tm.model, "default");
  int64_t n_train = 0, n_total = 0;
  for (auto& [n, p] : tm.model->named_parameters()) {
    n_total += p.numel();
    if (p.requires_grad()) n_train += p.numel();
  }
  train::TrainerOptions topts;
  topts.name = "finetune-embed";
  topts.steps = steps, topts.lr = lr, topts.weight_decay = 0.01, topts.warmup_steps = warmup;
  topts.seed = uint64_t(a.get_int("seed", 0));
  if (ckpt_every > 0) topts.checkpoint_every = ckpt_every, topts.checkpoint_dir = (out / "checkpoint").string();
  train::Trainer trainer(*tm.model, topts, &dp);  // rank 0's adapter on every rank
  if (dp.is_main()) fs::create_directories(out);

  // batches: the training pairs in a seeded order, reshuffled each epoch
  train::EpochSampler sampler(train_pairs.size(), topts.seed);
  Tensor labels = arange(0, double(batch), 1, DType::int64);
  trainer.set_loss([&](const train::MicroBatch& mb) {
    const std::vector<size_t> global = sampler.take(mb.step * batch, batch);
    std::vector<std::string> qs, ds;  // this rank's shard
    for (int64_t i = shard.begin; i < shard.end; ++i)
      qs.push_back(train_pairs[global[size_t(i)]].query), ds.push_back(train_pairs[global[size_t(i)]].doc);
    nn::ModelInputs iq = tm.batch(qs, size_t(max_q)), id = tm.batch(ds, size_t(max_d));
    iq.skip_padding = id.skip_padding = true;  // padded positions are never pooled
    // every query against every doc of the global batch: the shard's rows keep their history
    Tensor eq = dp.gather_rows(nn::l2_normalize(nn::mean_pooling(tm.model->forward(iq), iq.attention_mask)));
    Tensor ed = dp.gather_rows(nn::l2_normalize(nn::mean_pooling(tm.model->forward(id), id.attention_mask)));
    // the global batch's loss on every rank; backward reaches only this rank's rows, so x size
    // makes the mean over ranks the gradient
    return train::MicroBatchLoss{cross_entropy(mul(matmul(eq, ed.t()), scale), labels), 1.0, double(dp.size())};
  });
  if (a.has("resume")) {
    const std::string ck = (out / "checkpoint").string();
    if (!train::Trainer::has_checkpoint(ck)) fail("finetune-embed: --resume: ", ck, " holds no checkpoint");
    trainer.resume(ck);
    if (dp.is_main()) std::printf("resuming at step %lld of %lld from %s\n", (long long)trainer.step(), (long long)steps, ck.c_str());
  }
  trainer.fit();
  const std::vector<double>& losses = trainer.history().losses;
  const std::vector<double>& grad_norms = trainer.history().grad_norms;
  const double train_seconds = trainer.train_seconds();
  std::vector<double> sorted = trainer.history().step_seconds;
  std::sort(sorted.begin(), sorted.end());
  const double median_step = sorted[sorted.size() / 2];
  if (!dp.is_main()) return 0;

  const Retrieval tuned = evaluate(tm, held, size_t(max_q), size_t(max_d), size_t(n_examples));
  save_adapter_atomic(*tm.model, out / "adapter");
  std::error_code ec;
  fs::remove_all(out / "checkpoint", ec);  // the final adapter supersedes it
  write_loss_svg((out / "loss.svg").string(), losses, "LoRA on " + fs::path(a.get("model")).filename().string() +
                                                          ": in-batch negatives loss per step");

  std::printf("\nrecall on %zu held-out pairs     @1       @10\n", held.size());
  std::printf("  base model                %7.3f   %7.3f\n", base.recall_at_1, base.recall_at_10);
  std::printf("  with the LoRA adapter     %7.3f   %7.3f\n", tuned.recall_at_1, tuned.recall_at_10);
  std::printf("\nexample queries (top 3 lemmas with the adapter; * = the right one):\n");
  nlohmann::json examples = nlohmann::json::array();
  for (size_t q = 0; q < tuned.top3.size(); ++q) {
    std::printf("  \"%s\" (%s)\n    ", held[q].query.c_str(), held[q].doc.c_str());
    nlohmann::json top = nlohmann::json::array();
    for (size_t k = 0; k < tuned.top3[q].size(); ++k) {
      const std::string& d = held[tuned.top3[q][k]].doc;
      std::printf("%s%s%s", k ? ", " : "", d.c_str(), d == held[q].doc ? "*" : "");
      top.push_back(d);
    }
    std::printf("\n");
    examples.push_back({{"query", held[q].query}, {"answer", held[q].doc}, {"top3", top}});
  }
  nlohmann::json report = {{"model", a.get("model")},
                           {"recall_at_1_base", base.recall_at_1},
                           {"recall_at_1_tuned", tuned.recall_at_1},
                           {"recall_at_10_base", base.recall_at_10},
                           {"recall_at_10_tuned", tuned.recall_at_10},
                           {"train_pairs", train_pairs.size()},
                           {"heldout_pairs", held.size()},
                           {"steps", steps},
                           {"batch", batch},
                           {"lr", lr},
                           {"seconds", train_seconds},
                           {"seconds_per_step_median", median_step},
                           {"ranks", dp.size()},
                           {"gradient_bytes_per_step", dp.size() > 1 ? train::DataParallel::gradient_bytes(trainer.trainable()) : 0},
                           {"trainable_parameters", n_train},
                           {"total_parameters", n_total},
                           {"final_loss", losses.back()},
                           // after the ranks' average: what one process gets on the global batch
                           {"gradient_norms", grad_norms},
                           {"examples", examples}};
  write_file_atomic(out / "report.json", report.dump(2) + "\n");
  std::printf("\nfinetune-embed: %lld steps in %.0f s (median %.2f s/step); wrote %s/{adapter,loss.svg,report.json}\n",
              (long long)steps, train_seconds, median_step, out.string().c_str());
  return 0;
}

Registrar reg_pairs({"wordnet-pairs", "build (gloss -> lemma) pairs from WordNet and split them", run_wordnet_pairs});
Registrar reg_ft({"finetune-embed", "LoRA-tune a sentence-transformers encoder on (query, doc) pairs", run_finetune_embed});

}  // namespace

}  // namespace peft::cli
