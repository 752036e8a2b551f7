import BlockCore
import NBD

/// qemu-nbd's `main` after option parsing: its checks in its order, then
/// -L, -d, --fork, or serving.
extension ServeCommand {
  /// Runs qemu-nbd with `arguments` (the first is the name it was invoked by).
  static func run(arguments: [String], console: Console) async -> Int32 {
    let reporter = Reporter(console: console, programName: "qemu-nbd")
    // A daemon started by --fork learns so (and its parent's socket
    // activation) from its environment, before anything is printed.
    let daemonActivation = ServeDaemon.adopt()
    // The daemon parses the command line its parent has checked and
    // reported on (warnings included): it prints nothing of it again.
    let parseConsole = daemonActivation == nil ? console : Console.capture()
    let parseReporter = Reporter(console: parseConsole, programName: "qemu-nbd")
    guard let options = parse(arguments, reporter: parseReporter, console: parseConsole) else {
      return 1
    }
    if case .exit(let status) = options { return status }
    guard case .serve(var options) = options else { return 1 }
    let invokedAs = arguments.first ?? "qemu-nbd"
    // qemu-nbd's checks after option parsing, in its order.
    if options.list {
      if !options.operands.isEmpty {
        reporter.error("List mode is incompatible with a file name")
        return 1
      }
      if options.deviceSettingsGiven {
        reporter.error("List mode is incompatible with per-device settings")
        return 1
      }
      if options.fork {
        reporter.error("List mode is incompatible with forking")
        return 1
      }
    } else if options.operands.count != 1 {
      reporter.error("Invalid number of arguments")
      console.writeError("Try `\(invokedAs) --help' for more information.\n")
      return 1
    } else {
      options.filename = options.operands[0]
    }
    if let path = options.traceLogFile, !openTraceLog(path, reporter: reporter) { return 1 }
    let activated = daemonActivation ?? socketActivationCount()
    if activated > 0, let problem = activationConflict(options) {
      reporter.error(problem)
      return 1
    }
    if activated > 1 {
      reporter.error("qemu-nbd does not support socket activation with LISTEN_FDS > 1")
      return 1
    }
    let tls: NBDTLSCredentials?
    switch tlsCredentials(options) {
    case .success(let credentials): tls = credentials
    case .failure(let problem):
      reporter.error(problem.message)
      return 1
    }
    if options.selinuxLabel != nil && options.socketPath == nil && options.device == nil {
      reporter.error("--selinux-label is not permitted without --socket")
      return 1
    }
    if options.list {
      let address: NBDServerAddress =
        options.socketPath.map { .unix(path: $0) }
        ?? .inet(host: options.bindAddress ?? "0.0.0.0", port: options.port ?? "10809")
      let client = tls.map {
        NBDClientTLS(credentials: $0, hostname: options.tlsHostname ?? options.bindAddress)
      }
      return await ServeList.run(address, tls: client, reporter: reporter)
    }
    if options.disconnect {
      return ServeDevice.disconnect(options.filename, reporter: reporter)
    }
    if options.fork && daemonActivation == nil {
      return ServeDaemon.spawnAndWait(activated: activated, reporter: reporter)
    }
    if let device = options.device, options.socketPath == nil {
      options.socketPath = "/var/lock/qemu-nbd-" + ServeDevice.baseName(device)
    }
    return await ServeRunner(
      options: options, reporter: reporter, activated: activated, tlsCredentials: tls
    ).run()
  }

  /// A problem with the command line, as qemu-nbd reports it.
  struct Problem: Error {
    let message: String
  }

  /// qemu-nbd's TLS checks: the credentials --tls-creds names (a server's,
  /// or a client's for -L), nil without it, or qemu-nbd's error.
  private static func tlsCredentials(_ options: ServeOptions) -> Result<
    NBDTLSCredentials?, Problem
  > {
    guard let id = options.tlsCreds else {
      if options.tlsAuthz != nil {
        return .failure(Problem(message: "--tls-authz is not permitted without --tls-creds"))
      }
      if options.tlsHostname != nil {
        return .failure(Problem(message: "--tls-hostname is not permitted without --tls-creds"))
      }
      return .success(nil)
    }
    if options.device != nil {
      return .failure(Problem(message: "TLS is not supported with a host device"))
    }
    if options.tlsAuthz != nil && options.list {
      return .failure(Problem(message: "TLS authorization is incompatible with export list"))
    }
    if options.tlsHostname != nil && !options.list {
      return .failure(Problem(message: "TLS hostname is only supported with export list"))
    }
    do {
      return .success(
        try NBDTLSObjects.credentials(id, for: options.list ? .client : .server))
    } catch {
      return .failure(Problem(message: "Failed to get TLS creds: \(error)"))
    }
  }

  /// qemu-nbd's `socket_activation_validate_opts`: what cannot go with
  /// socket activation, or nil.
  private static func activationConflict(_ options: ServeOptions) -> String? {
    if options.device != nil { return "NBD device can't be set when using socket activation" }
    if options.socketPath != nil { return "Unix socket can't be set when using socket activation" }
    if options.bindAddress != nil {
      return "The interface can't be set when using socket activation"
    }
    if options.port != nil { return "TCP port number can't be set when using socket activation" }
    if options.selinuxLabel != nil {
      return "SELinux label can't be set when using socket activation"
    }
    if options.list { return "List mode is incompatible with socket activation" }
    return nil
  }
}
