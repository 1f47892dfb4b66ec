// Errors as values. The library never throws, aborts or exits: every fallible call returns an
// Expected<T> (a T or an Error) or a Status (Expected<void>). Works under -fno-exceptions.
#pragma once

#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace mimo {

enum class Errc {
  io,                  // a file could not be opened, read, mapped or written
  parse,               // malformed JSON, safetensors header or other syntax
  invalid_checkpoint,  // a tensor or config key is missing, of the wrong dtype/shape, or out of bounds
  invalid_argument,    // the caller passed something the API does not accept (token id, option)
  context_full,        // a session would grow past its capacity
  out_of_memory,       // an allocation the library needed failed or exceeds a limit
  cancelled,           // a callback or cancellation flag asked to stop
  unsupported,         // valid input this build does not implement (an unknown dtype, rope scaling)
  corrupt_state,       // a saved session or other serialized state failed validation
  backend,             // the compute backend (CUDA, cuBLASLt) reported a failure
};

constexpr std::string_view to_string(Errc code) {
  switch (code) {
    case Errc::io: return "io";
    case Errc::parse: return "parse";
    case Errc::invalid_checkpoint: return "invalid_checkpoint";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::context_full: return "context_full";
    case Errc::out_of_memory: return "out_of_memory";
    case Errc::cancelled: return "cancelled";
    case Errc::unsupported: return "unsupported";
    case Errc::corrupt_state: return "corrupt_state";
    case Errc::backend: return "backend";
  }
  return "unknown";
}

// A code for programs and a message for people. Messages name the file, tensor or key involved
// and, where a value was checked, what was expected and what was found.
class Error {
 public:
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}

  Errc code() const { return code_; }
  const std::string& message() const { return message_; }

  // "code: message", for logs.
  std::string describe() const { return std::string(to_string(code_)) + ": " + message_; }

  // Prefixes context, e.g. the file a lower-level parser was reading.
  Error&& with_context(std::string_view context) && {
    message_ = std::string(context) + ": " + message_;
    return std::move(*this);
  }

 private:
  Errc code_;
  std::string message_;
};

// Either a T or an Error. Accessing the value of an Expected that holds an error is a caller bug
// (undefined behaviour, like std::optional); test has_value() or `if (result)` first.
template <class T>
class [[nodiscard]] Expected {
  static_assert(!std::is_reference_v<T>, "Expected<T&> is not supported; use a pointer");

 public:
  Expected(T value) : has_(true) { new (&value_) T(std::move(value)); }
  Expected(Error error) : has_(false) { new (&error_) Error(std::move(error)); }

  Expected(Expected&& other) noexcept(std::is_nothrow_move_constructible_v<T>) : has_(other.has_) {
    if (has_) new (&value_) T(std::move(other.value_));
    else new (&error_) Error(std::move(other.error_));
  }
  Expected& operator=(Expected&& other) noexcept(std::is_nothrow_move_constructible_v<T>) {
    if (this != &other) {
      destroy();
      has_ = other.has_;
      if (has_) new (&value_) T(std::move(other.value_));
      else new (&error_) Error(std::move(other.error_));
    }
    return *this;
  }
  Expected(const Expected&) = delete;
  Expected& operator=(const Expected&) = delete;
  ~Expected() { destroy(); }

  bool has_value() const { return has_; }
  explicit operator bool() const { return has_; }

  T& value() & { return value_; }
  const T& value() const& { return value_; }
  T&& value() && { return std::move(value_); }
  T& operator*() & { return value_; }
  const T& operator*() const& { return value_; }
  T&& operator*() && { return std::move(value_); }
  T* operator->() { return &value_; }
  const T* operator->() const { return &value_; }

  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  void destroy() {
    if (has_) value_.~T();
    else error_.~Error();
  }

  bool has_;
  union {
    T value_;
    Error error_;
  };
};

template <>
class [[nodiscard]] Expected<void> {
 public:
  Expected() = default;
  Expected(Error error) : error_(std::move(error)), has_error_(true) {}

  bool has_value() const { return !has_error_; }
  explicit operator bool() const { return !has_error_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_{Errc::io, {}};
  bool has_error_ = false;
};

using Status = Expected<void>;

inline Status ok() { return {}; }

}  // namespace mimo
