// A progress display for long loops: a redrawn bar on a terminal, plain lines
// (every 10%) otherwise, so logs stay readable.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace peft::train {

class Progress {
 public:
  // out nullptr: silent (the ranks of a data-parallel job other than rank 0). `first`: the
  // count already done before this display started (a resumed run), left out of the ETA.
  Progress(std::string label, int64_t total, FILE* out = stderr, int64_t first = 0)
      : label_(std::move(label)), total_(total), first_(first), out_(out), tty_(out && isatty(fileno(out)) != 0),
        start_(std::chrono::steady_clock::now()) {}

  // `info` is appended (e.g. "loss 2.31  41k tok/s").
  void update(int64_t done, const std::string& info) {
    if (!out_) return;
    double el = elapsed();
    double eta = done > first_ ? el / double(done - first_) * double(total_ - done) : 0;
    if (tty_) {
      if (done != total_ && el - last_draw_ < 0.1) return;
      last_draw_ = el;
      const int width = 24;
      int fill = total_ ? int(width * done / total_) : width;
      std::string bar(size_t(fill), '#');
      bar.resize(width, '.');
      std::fprintf(out_, "\r%s [%s] %lld/%lld  %s  ETA %.0fs   ", label_.c_str(), bar.c_str(),
                   (long long)done, (long long)total_, info.c_str(), eta);
      if (done == total_) std::fprintf(out_, "\n");
      std::fflush(out_);
    } else {
      int64_t tenth = total_ >= 10 ? total_ / 10 : 1;
      if (done % tenth != 0 && done != total_) return;
      std::fprintf(out_, "%s %lld/%lld  %s  elapsed %.1fs  ETA %.0fs\n", label_.c_str(),
                   (long long)done, (long long)total_, info.c_str(), el, eta);
      std::fflush(out_);
    }
  }

  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::string label_;
  int64_t total_, first_;
  FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  double last_draw_ = -1;
};

}  // namespace peft::train
