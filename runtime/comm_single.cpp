// Chosen by meson.build when MPI is not found: the world is this process.
#include "runtime/comm.h"

namespace peft::comm {

namespace {
Communicator* started = nullptr;
}

Communicator& world() {
  started = &single_process();
  return *started;
}

Communicator* world_if_started() { return started; }

}  // namespace peft::comm
