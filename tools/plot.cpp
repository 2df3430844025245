#include "tools/plot.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "io/atomic_file.h"

namespace peft::cli {

void write_loss_svg(const std::string& path, const std::vector<double>& losses, const std::string& title) {
  const double W = 640, H = 360, L = 50, R = 15, T = 30, B = 40;
  double lo = 1e300, hi = -1e300;
  for (double v : losses) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (hi <= lo) hi = lo + 1;
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << W / 2 << "\" y=\"18\" text-anchor=\"middle\">" << title << "</text>\n"
      << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B
      << "\" stroke=\"black\"/>\n<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\""
      << H - B << "\" stroke=\"black\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    double v = lo + (hi - lo) * i / 4, y = H - B - (H - T - B) * i / 4;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    svg << "<text x=\"" << L - 5 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << buf << "</text>\n";
  }
  svg << "<text x=\"" << W / 2 << "\" y=\"" << H - 8 << "\" text-anchor=\"middle\">step (1.."
      << losses.size() << ")</text>\n<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  for (size_t i = 0; i < losses.size(); ++i) {
    double x = L + (W - L - R) * double(i) / double(std::max<size_t>(1, losses.size() - 1));
    double y = H - B - (H - T - B) * (losses[i] - lo) / (hi - lo);
    svg << x << "," << y << " ";
  }
  svg << "\"/>\n</svg>\n";
  io::write_file_atomic(path, svg.str());
}

}  // namespace peft::cli
