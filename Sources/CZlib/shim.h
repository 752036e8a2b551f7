// zlib (Debian: zlib1g-dev) for the qcow2 driver's compressed clusters.
#ifndef SPINDLE_CZLIB_SHIM_H
#define SPINDLE_CZLIB_SHIM_H
#include <zlib.h>

// inflateInit2 is a macro Swift cannot import.
static inline int spindle_inflateInit2(z_streamp stream, int windowBits) {
  return inflateInit2(stream, windowBits);
}

// deflateInit2 is a macro Swift cannot import.
static inline int spindle_deflateInit2(z_streamp stream, int level, int method, int windowBits,
                                       int memLevel, int strategy) {
  return deflateInit2(stream, level, method, windowBits, memLevel, strategy);
}
#endif
