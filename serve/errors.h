// An error a request caused, with its HTTP status and OpenAI's error fields: the server turns
// it into {"error": {"message", "type", "param", "code"}} with that status.
#pragma once
#include <stdexcept>
#include <string>

namespace peft::serve {

class ServeError : public std::runtime_error {
 public:
  ServeError(int status, std::string message, std::string param = "", std::string code = "")
      : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }  // the request field at fault ("" when none)
  const std::string& code() const { return code_; }    // e.g. "model_not_found"
  // OpenAI's "type" for the status: invalid_request_error, authentication_error, ...
  std::string type() const;

 private:
  int status_;
  std::string param_, code_;
};

}  // namespace peft::serve
