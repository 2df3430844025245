// peft::Error: the exception type of the library, with subclasses for the kinds a caller may
// want to tell apart. Messages name the op, the shapes and the dtypes involved so a user can
// act on them.
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

// Kinds a caller can catch separately; every one is a peft::Error with the same message.
// An op's operands do not fit it: shapes, dtypes or devices ("[matmul] shapes ...").
class ShapeError : public Error {
 public:
  using Error::Error;
};
// A name that is not there: a state-dict key, a module, parameter or adapter name.
class KeyError : public Error {
 public:
  using Error::Error;
};
// Malformed contents: a safetensors header, JSON, a config or tokenizer field.
class FormatError : public Error {
 public:
  using Error::Error;
};
// The file system refused: a file that cannot be opened, read, written, synced or renamed.
class IOError : public Error {
 public:
  using Error::Error;
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

// The same, throwing one of the kinds above.
template <class E, class... A>
[[noreturn]] void fail_as(const A&... parts) {
  std::ostringstream os;
  detail::stream_all(os, parts...);
  throw E(os.str());
}
template <class... A>
[[noreturn]] void fail_shape(const A&... parts) { fail_as<ShapeError>(parts...); }
template <class... A>
[[noreturn]] void fail_key(const A&... parts) { fail_as<KeyError>(parts...); }
template <class... A>
[[noreturn]] void fail_format(const A&... parts) { fail_as<FormatError>(parts...); }
template <class... A>
[[noreturn]] void fail_io(const A&... parts) { fail_as<IOError>(parts...); }

// "[2, 3]" — the same text PyTorch users read in shape errors.
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace peft

#define PEFT_CHECK(cond, ...)                 \
  do {                                        \
    if (!(cond)) ::peft::fail(__VA_ARGS__);   \
  } while (0)
