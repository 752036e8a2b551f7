// librados and librbd (Debian: librbd-dev, which pulls in librados-dev) for
// the rbd protocol driver. Debian ships no pkg-config files for them: the
// module map links -lrbd -lrados.
#ifndef SPINDLE_CRBD_SHIM_H
#define SPINDLE_CRBD_SHIM_H
#include <rados/librados.h>
#include <rbd/librbd.h>
#endif
