// The bytes behind the AXI4 ports of axi_mem.sv, and the protocol errors they saw.
//
// The ports reach the memory through DPI-C (airfoil_mem_read_word, airfoil_mem_write_word,
// airfoil_mem_protocol_error); the cocotb testbench fills and reads it in bulk through
// ctypes (the airfoil_mem_* host functions below, exported from the simulator binary).
// Built into the Verilator model by sim/core_harness.py.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "svdpi.h"

namespace {
std::vector<uint8_t> memory;
std::vector<std::string> errors;
}  // namespace

extern "C" {

// -- host side (ctypes) ------------------------------------------------------------------

// Make the memory `size` zero bytes and forget earlier protocol errors.
void airfoil_mem_reset(uint64_t size) {
    memory.assign(size, 0);
    errors.clear();
}

uint64_t airfoil_mem_size() { return memory.size(); }

// Copy `n` bytes from `src` to address `addr`; 0 when outside the memory.
int airfoil_mem_load(uint64_t addr, const uint8_t* src, uint64_t n) {
    if (addr > memory.size() || n > memory.size() - addr) return 0;
    std::memcpy(memory.data() + addr, src, n);
    return 1;
}

// Copy `n` bytes at address `addr` to `dst`; 0 when outside the memory.
int airfoil_mem_dump(uint64_t addr, uint8_t* dst, uint64_t n) {
    if (addr > memory.size() || n > memory.size() - addr) return 0;
    std::memcpy(dst, memory.data() + addr, n);
    return 1;
}

int airfoil_mem_error_count() { return static_cast<int>(errors.size()); }

const char* airfoil_mem_error(int i) {
    return i >= 0 && i < static_cast<int>(errors.size()) ? errors[i].c_str() : "";
}

// -- design side (DPI-C) -----------------------------------------------------------------

// One word of `nbytes` at `addr` into `data` (little-endian); 0 (and zeros) when any of
// its bytes lies outside the memory.
int airfoil_mem_read_word(long long addr, int nbytes, svBitVecVal* data) {
    std::memset(data, 0, 128);
    uint64_t a = static_cast<uint64_t>(addr);
    if (a > memory.size() || static_cast<uint64_t>(nbytes) > memory.size() - a) return 0;
    std::memcpy(data, memory.data() + a, nbytes);
    return 1;
}

// Write the bytes of a word whose strobe bit is set; 0 (nothing written) when any byte
// of the word lies outside the memory.
int airfoil_mem_write_word(long long addr, int nbytes, const svBitVecVal* data,
                           const svBitVecVal* strb) {
    uint64_t a = static_cast<uint64_t>(addr);
    if (a > memory.size() || static_cast<uint64_t>(nbytes) > memory.size() - a) return 0;
    const uint8_t* src = reinterpret_cast<const uint8_t*>(data);
    for (int j = 0; j < nbytes; ++j)
        if (strb[j / 32] >> (j % 32) & 1) memory[a + j] = src[j];
    return 1;
}

void airfoil_mem_protocol_error(const char* msg) { errors.emplace_back(msg); }

}  // extern "C"
