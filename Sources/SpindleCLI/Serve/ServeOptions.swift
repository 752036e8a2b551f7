import BlockCore
import NBD

#if canImport(Glibc)
  import Glibc
#endif

/// What `qemu-nbd`'s command line asked for (qemu-nbd 7.2's options that
/// Spindle implements).
struct ServeOptions {
  var socketPath: String?
  var port: String?
  var bindAddress: String?
  var exportName = ""
  var description: String?
  var format: String?
  var readOnly = false
  var persistent = false
  var shared = 1
  var imageOpts = false
  var cache: CacheMode?
  var aio: String?
  var discard: DiscardMode = .ignore
  var detectZeroes: DetectZeroesMode = .off
  /// -A: offer the `qemu:allocation-depth` meta context.
  var allocationDepth = false
  /// -B: the dirty bitmaps exported, in qemu-nbd's order (the last given
  /// first: it prepends each to its list).
  var bitmaps: [String] = []
  /// -o: where the served disk starts in the image (qemu-nbd's
  /// `qemu_strtou64`: a leading minus wraps around); 0 for none.
  var offset: UInt64 = 0
  /// -l: the internal snapshot served (read-only).
  var snapshot: InternalSnapshotOption?
  /// -s: writes go to a temporary overlay discarded at exit.
  var temporaryOverlay = false
  /// --handshake-limit: seconds a client may take to negotiate (0: no limit).
  var handshakeLimit = 10
  /// --max-requests: requests one connection may have in flight.
  var maxRequests = NBDProtocol.defaultServerRequestsInFlight
  /// --pid-file: where the server's pid goes once it serves.
  var pidFile: String?
  var filename = ""
  /// -L: list another server's exports instead of serving.
  var list = false
  /// --fork: serve from a daemon, the command returning once it serves.
  var fork = false
  /// -v: accepted; qemu-nbd 7.2 prints nothing more without a kernel device.
  var verbose = false
  /// -T file=: the trace log to create.
  var traceLogFile: String?
  /// --selinux-label: the SELinux context for the listening socket.
  var selinuxLabel: String?
  /// -c: the kernel NBD device to connect.
  var device: String?
  /// -d: disconnect the kernel NBD device named by the operand.
  var disconnect = false
  /// Whether an option that -L refuses as a per-device setting was given
  /// (-x, -D, -o N, -c, -d, -f, -l NAME, -B, -A, --aio, --discard, --cache, -n).
  var deviceSettingsGiven = false
  /// --tls-creds: the ID of the TLS credentials (server, or client with -L).
  var tlsCreds: String?
  /// --tls-authz: the ID of the `authz-simple` object clients must match.
  var tlsAuthz: String?
  /// --tls-hostname: the name the server's certificate must carry (-L).
  var tlsHostname: String?
  /// --object: the objects defined (secrets, TLS credentials, authz).
  var objects = ObjectRegistry()
  /// The operands (FILE, or the device of -d).
  var operands: [String] = []
}

/// Systemd socket activation (QEMU's `check_socket_activation`): the number
/// of sockets passed from fd 3 when `LISTEN_PID` names this process, else 0.
func socketActivationCount() -> Int {
  guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }),
    let pid = Int32(pidText), pid == getpid(),
    let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }),
    let count = Int(countText), count > 0
  else { return 0 }
  return count
}
