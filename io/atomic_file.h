// Writing files so that a failure (or a kill) never leaves a half-written file in place:
// the shared pieces of the safetensors writer, the adapter-folder writer and the tools.
#pragma once
#include <functional>
#include <string>

namespace peft::io {

// A suffix for temporary file names no other writer uses at the same time: the process id,
// a process-wide atomic counter and 32 random bits ("1234.7.9f3a01bc").
std::string unique_temp_suffix();

// Removes the temporary files that writers of `name` in `dir` killed mid-write left behind
// (".NAME.tmp.<pid>.*" and ".NAME.saving.<pid>.*" whose process no longer runs); every writer
// calls it before it starts, so a SIGKILL leaves nothing the next write does not clean up.
// Returns how many it removed. Files of live processes are never touched.
int remove_stale_temp_files(const std::string& dir, const std::string& name);

// fsync of a folder, so that a rename in it is durable (best effort: some file systems refuse).
void fsync_dir(const std::string& dir);

// Writes `bytes` to `path` atomically: a hidden temporary file in the same folder
// (".NAME.tmp.<suffix>"), fsync, rename over `path`, fsync of the folder. On failure the old
// file is unchanged, the temporary file is removed, and the peft::Error names both.
void write_file_atomic(const std::string& path, const std::string& bytes);
// The same for bytes produced piece by piece: `body(write)` calls write(data, n) any number of
// times (GGUFWriter streams its tensors through it). An exception from `body` removes the
// temporary file and propagates.
using AtomicWrite = std::function<void(const void* data, size_t n)>;
void write_file_atomic_stream(const std::string& path, const std::function<void(const AtomicWrite& write)>& body);

}  // namespace peft::io
