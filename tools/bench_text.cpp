// `peft bench tokenizer`: encode throughput of peft::Tokenizer against the Rust `tokenizers`
// library called from Python, both on one thread, on real text from Debian's files.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/tokenizer.h"
#include "tools/bench_common.h"
#include "tools/cli.h"

namespace peft::cli::bench {

namespace {

namespace fs = std::filesystem;

// The corpus: every file of /usr/share/common-licenses, then the English, French and German
// word lists, up to `bytes`; one document per line.
std::string debian_text(size_t bytes) {
  std::string out;
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/share/common-licenses", ec))
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const char* w : {"/usr/share/dict/american-english", "/usr/share/dict/french", "/usr/share/dict/ngerman"})
    files.emplace_back(w);
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) continue;
    std::ostringstream ss;
    ss << in.rdbuf();
    out += ss.str();
    if (!out.empty() && out.back() != '\n') out += '\n';
    if (out.size() >= bytes) break;
  }
  if (out.size() > bytes) {
    out.resize(bytes);
    while (!out.empty() && out.back() != '\n') out.pop_back();  // whole lines
  }
  return out;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> v;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(l);
  return v;
}

}  // namespace

int bench_tokenizer(const std::vector<std::string>& args, Report& rep) {
  Options o;
  o.reps = 3;
  o.rounds = 2;
  o.warmup = 1;
  std::vector<std::string> rest = parse_common(args, o);
  size_t mb = 2;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--mb" && i + 1 < rest.size()) mb = size_t(parse_int(rest[i], rest[i + 1], 1)), ++i;
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (o.help) {
    std::printf(
        "usage: peft bench tokenizer [--mb N] [options]\n"
        "  Encodes N MB (default 2) of Debian's text, one document per line (the files of\n"
        "  /usr/share/common-licenses, then the American, French and German word lists), with\n"
        "  the three tokenizer.json files of tests/data/hf (BERT WordPiece of all-MiniLM-L6-v2,\n"
        "  GPT-2 byte-level BPE, Llama-style BPE with byte fallback): special tokens added, no\n"
        "  padding or truncation. PyTorch side: the Rust `tokenizers` library's encode_batch\n"
        "  on one thread (TOKENIZERS_PARALLELISM=false). Defaults --reps 3 --rounds 2.\n%s",
        kCommonHelp);
    return 0;
  }
  auto py = start_worker("tokenizer", o, rep);
  ScratchDir scratch;
  const std::string text = debian_text(mb << 20);
  const std::string text_path = (scratch.path / "corpus.txt").string();
  std::ofstream(text_path, std::ios::binary) << text;
  const std::vector<std::string> lines = lines_of(text);
  const double megabytes = double(text.size()) / 1e6;
  std::fprintf(stderr, "tokenizer: %.2f MB, %zu lines\n", megabytes, lines.size());
  const std::string data = bench_script_dir() + "/../../tests/data/hf/";
  std::vector<Row> rows;
  for (const char* name : {"tok_wordpiece_minilm", "tok_bytelevel_bpe", "tok_sentencepiece_bpe_byte_fallback"}) {
    const std::string file = data + name + "/tokenizer.json";
    Tokenizer tok = Tokenizer::from_file(file);
    size_t tokens = 0;
    Case c;
    c.batch = false;
    c.run = [&] {
      auto enc = tok.encode_batch(lines, true, std::nullopt, std::nullopt);
      tokens = 0;
      for (const auto& e : enc) tokens += e.size();
    };
    auto [ours, theirs] =
        interleave(c, py.get(), {{"case", "encode"}, {"file", file}, {"text", text_path}}, o);
    char note[96];
    std::snprintf(note, sizeof note, "%.2f MB/s, %.1fM tokens/s", megabytes / ours, double(tokens) / ours / 1e6);
    rows.push_back({"tokenizer", name + 4, ours, theirs, note});
    std::fprintf(stderr, "  %-34s %s  %s\n", name + 4, fmt_time(ours).c_str(), note);
  }
  print_rows(rows, o.markdown);
  rep.rows.insert(rep.rows.end(), rows.begin(), rows.end());
  return 0;
}

}  // namespace peft::cli::bench
