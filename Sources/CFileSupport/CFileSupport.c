#define _GNU_SOURCE
#include "CFileSupport.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/falloc.h>
#endif

int cfs_o_direct(void) {
#ifdef O_DIRECT
  return O_DIRECT;
#else
  return 0;
#endif
}

int cfs_seek_data(void) {
#ifdef SEEK_DATA
  return SEEK_DATA;
#else
  return -1;
#endif
}

int cfs_seek_hole(void) {
#ifdef SEEK_HOLE
  return SEEK_HOLE;
#else
  return -1;
#endif
}

int cfs_falloc_keep_size(void) {
#ifdef FALLOC_FL_KEEP_SIZE
  return FALLOC_FL_KEEP_SIZE;
#else
  return 0;
#endif
}

int cfs_falloc_punch_hole(void) {
#ifdef FALLOC_FL_PUNCH_HOLE
  return FALLOC_FL_PUNCH_HOLE;
#else
  return 0;
#endif
}

int cfs_falloc_zero_range(void) {
#ifdef FALLOC_FL_ZERO_RANGE
  return FALLOC_FL_ZERO_RANGE;
#else
  return 0;
#endif
}

int cfs_fallocate(int fd, int mode, int64_t offset, int64_t length) {
#ifdef __linux__
  return fallocate(fd, mode, (off_t)offset, (off_t)length);
#else
  (void)fd; (void)mode; (void)offset; (void)length;
  errno = ENOSYS;
  return -1;
#endif
}

#ifdef F_OFD_SETLK
static void cfs_fill_lock(struct flock *lock, int64_t start, int64_t length, int type) {
  lock->l_whence = SEEK_SET;
  lock->l_start = (off_t)start;
  lock->l_len = (off_t)length;
  lock->l_pid = 0;
  lock->l_type = type == 0 ? F_RDLCK : (type == 1 ? F_WRLCK : F_UNLCK);
}
#endif

int cfs_ofd_setlock(int fd, int64_t start, int64_t length, int type) {
#ifdef F_OFD_SETLK
  struct flock lock = {0};
  cfs_fill_lock(&lock, start, length, type);
  return fcntl(fd, F_OFD_SETLK, &lock);
#else
  (void)fd; (void)start; (void)length; (void)type;
  errno = ENOSYS;
  return -1;
#endif
}

int cfs_ofd_testlock(int fd, int64_t start, int64_t length, int type) {
#ifdef F_OFD_GETLK
  struct flock lock = {0};
  cfs_fill_lock(&lock, start, length, type);
  if (fcntl(fd, F_OFD_GETLK, &lock) == -1) {
    return -1;
  }
  return lock.l_type == F_UNLCK ? 0 : 1;
#else
  (void)fd; (void)start; (void)length; (void)type;
  errno = ENOSYS;
  return -1;
#endif
}
