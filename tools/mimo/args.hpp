// Command-line parsing for the mimo tool: `--name value` options and `--flag` switches.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <mimo/error.hpp>

namespace mimo::cli {

class Args {
 public:
  // `options` take a value, `flags` do not. Anything else is an error.
  static Expected<Args> parse(int argc, char** argv, const std::set<std::string>& options,
                              const std::set<std::string>& flags) {
    Args a;
    for (int i = 0; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0 && !(arg.size() == 2 && arg[0] == '-')) {
        return Error(Errc::invalid_argument, "unexpected argument '" + arg + "'");
      }
      const std::string name = arg.substr(arg[1] == '-' ? 2 : 1);
      if (flags.count(name)) {
        a.flags_.insert(name);
      } else if (options.count(name)) {
        if (i + 1 >= argc) return Error(Errc::invalid_argument, "--" + name + " needs a value");
        a.values_[name] = argv[++i];
      } else {
        return Error(Errc::invalid_argument, "unknown option '" + arg + "'");
      }
    }
    return a;
  }

  bool flag(const std::string& name) const { return flags_.count(name) != 0; }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  const std::map<std::string, std::string>& values() const { return values_; }

  Expected<int64_t> get_int(const std::string& name, int64_t fallback) const {
    if (!has(name)) return fallback;
    return parse_int(name, get(name));
  }
  Expected<double> get_double(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    const std::string v = get(name);
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') return Error(Errc::invalid_argument, "--" + name + ": '" + v + "' is not a number");
    return d;
  }

  static Expected<int64_t> parse_int(const std::string& name, const std::string& v) {
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0') return Error(Errc::invalid_argument, "--" + name + ": '" + v + "' is not an integer");
    return static_cast<int64_t>(x);
  }

  // "1,2,3" -> {1, 2, 3}.
  static Expected<std::vector<int32_t>> parse_ids(const std::string& name, const std::string& text) {
    std::vector<int32_t> ids;
    size_t pos = 0;
    while (pos <= text.size()) {
      const size_t comma = text.find(',', pos);
      const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      auto v = parse_int(name, item);
      if (!v) return std::move(v).error();
      if (*v < INT32_MIN || *v > INT32_MAX) return Error(Errc::invalid_argument, "--" + name + ": id " + item + " is out of range");
      ids.push_back(static_cast<int32_t>(*v));
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
    return ids;
  }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
};

// Prints "mimo <command>: <error>" to stderr and returns the exit code for failures.
inline int fail(std::string_view command, const Error& e) {
  std::fprintf(stderr, "mimo %.*s: %s\n", static_cast<int>(command.size()), command.data(), e.describe().c_str());
  return 1;
}

}  // namespace mimo::cli
