// A line plot of a loss curve as a standalone SVG file (no plotting library needed).
#pragma once
#include <string>
#include <vector>

namespace peft::cli {

// Writes `losses` (one per step) with a title and axis labels to `path`.
void write_loss_svg(const std::string& path, const std::vector<double>& losses, const std::string& title);

}  // namespace peft::cli
