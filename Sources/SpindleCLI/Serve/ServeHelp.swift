/// `qemu-nbd --help`, for the options Spindle implements.
enum ServeHelp {
  static let text = """
    Usage: qemu-nbd [OPTIONS] FILE
      or:  qemu-nbd [OPTIONS] --socket=PATH FILE

    Exports a QEMU disk image using the NBD protocol (Spindle's engine).

    General purpose options:
      -h, --help                display this help and exit
      -V, --version             output version information and exit

    Connection properties:
      -p, --port=PORT           port to listen on (default `10809')
      -b, --bind=IFACE          interface to bind to (default `0.0.0.0')
      -k, --socket=PATH         path to the unix socket
                                (default '/var/lock/qemu-nbd-DEVICE')
      -e, --shared=NUM          device can be shared by NUM clients (default '1')
      -t, --persistent          don't exit on the last connection
      -x, --export-name=NAME    expose export by name (default is empty string)
      -D, --description=TEXT    export a human-readable description

    Block device options:
      -f, --format=FORMAT       set image format (raw, qcow2, ...)
      -r, --read-only           export read-only
      -n, --nocache             disable host cache
          --cache=MODE          set cache mode used to access the disk image, the
                                valid options are: 'none', 'writeback' (default),
                                'writethrough', 'directsync' and 'unsafe'
          --aio=MODE            set AIO mode (native, io_uring or threads)
          --discard=MODE        set discard mode (ignore, unmap)
          --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)
          --image-opts          treat FILE as a full set of image options

    Socket activation (LISTEN_PID/LISTEN_FDS, fd 3) is supported.
    Not supported by Spindle yet: -o, -A, -B, -L, -s, -l, -c, -d, -v, -T,
    --object, --tls-creds, --tls-authz, --tls-hostname, --fork, --pid-file,
    --selinux-label.

    """
}
