// The CPU model is compiled once for the whole tool, in cpu_model.cpp: every command that runs it
// sees these declarations, so the forward pass and its kernels are not compiled again in each
// command's file (tens of seconds each, minutes under the sanitizers).
#pragma once

#include <mimo/mimo.hpp>
#include <mimo/mtp_drafter.hpp>

extern template class mimo::Model<mimo::Cpu>;
extern template class mimo::Session<mimo::Cpu>;
extern template class mimo::MtpDrafter<mimo::Cpu>;
