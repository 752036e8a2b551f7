// libzstd (Debian: libzstd-dev) for the qcow2 driver's zstd-compressed clusters.
#ifndef SPINDLE_CZSTD_SHIM_H
#define SPINDLE_CZSTD_SHIM_H
#include <zstd.h>
#endif
