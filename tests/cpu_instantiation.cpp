// The CPU model, compiled once for all the test programs: support.hpp declares these
// instantiations extern (MIMO_TEST_EXTERN_CPU), so each test does not compile the forward pass
// and its kernels again (20-140 s per file under the sanitizers). no_exceptions.cpp does not use
// it: that check must compile everything itself with -fno-exceptions.
#include <mimo/mimo.hpp>

template class mimo::Model<mimo::Cpu>;
template class mimo::Session<mimo::Cpu>;
