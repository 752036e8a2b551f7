// Linux-specific file interfaces that Swift's Glibc module does not import
// (they are declared only under _GNU_SOURCE): O_DIRECT, SEEK_DATA/SEEK_HOLE,
// open file description locks and fallocate(2). The values are taken from the
// C library at compile time, so they are right on every architecture.
// On platforms without an interface the accessor returns -1 (or 0 for
// O_DIRECT) and the wrapper fails with ENOSYS.
#ifndef CFILESUPPORT_H
#define CFILESUPPORT_H

#include <stdint.h>

/// The O_DIRECT open flag, or 0 when the platform has none.
int cfs_o_direct(void);
/// lseek's SEEK_DATA and SEEK_HOLE, or -1.
int cfs_seek_data(void);
int cfs_seek_hole(void);
/// fallocate(2) mode bits, or 0.
int cfs_falloc_keep_size(void);
int cfs_falloc_punch_hole(void);
int cfs_falloc_zero_range(void);

/// fallocate(2): 0 on success, -1 with errno set (ENOSYS where unsupported).
int cfs_fallocate(int fd, int mode, int64_t offset, int64_t length);

/// Places (`type` 0 = shared/read, 1 = exclusive/write) or removes (`type` 2)
/// an open file description lock on `length` bytes at `start` without
/// waiting (F_OFD_SETLK). 0 on success, -1 with errno set.
int cfs_ofd_setlock(int fd, int64_t start, int64_t length, int type);

/// Tests whether a lock of `type` (0 shared, 1 exclusive) could be placed
/// (F_OFD_GETLK): 0 when it could, 1 when another open file description holds
/// a conflicting lock, -1 with errno set on failure.
int cfs_ofd_testlock(int fd, int64_t start, int64_t length, int type);

#endif
