// The CPU model's one instantiation for the tool (see cpu_model.hpp).
#include <mimo/mimo.hpp>
#include <mimo/mtp_drafter.hpp>

template class mimo::Model<mimo::Cpu>;
template class mimo::Session<mimo::Cpu>;
template class mimo::MtpDrafter<mimo::Cpu>;
