// Without MIMO_CUDA, --backend cuda says so.
#ifndef MIMO_CLI_HAS_CUDA
#include "args.hpp"
#include "commands.hpp"

namespace mimo::cli {

static int no_cuda(const char* command) {
  return fail(command, Error(Errc::unsupported, "this mimo was built without CUDA (configure with -DMIMO_CUDA=ON)"));
}
int run_generate_cuda(const Args&, const char*) { return no_cuda("generate"); }
int run_chat_cuda(const Args&, const char*) { return no_cuda("chat"); }

}  // namespace mimo::cli
#endif
