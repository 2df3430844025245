// peft::Error: the single exception type of the library. Messages name the op,
// the shapes and the dtypes involved so a user can act on them.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace peft {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void stream_all(std::ostringstream&) {}
template <class T, class... R>
void stream_all(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  stream_all(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: fail("[matmul] shapes ", a, " and ", b).
template <class... A>
[[noreturn]] void fail(const A&... parts) {
  std::ostringstream os;
  detail::stream_all(os, parts...);
  throw Error(os.str());
}

// "[2, 3]" — the same text PyTorch users read in shape errors.
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace peft

#define PEFT_CHECK(cond, ...)                 \
  do {                                        \
    if (!(cond)) ::peft::fail(__VA_ARGS__);   \
  } while (0)
